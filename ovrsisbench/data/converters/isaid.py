"""iSAID: DOTA-v1.0 images + iSAID semantic colour masks (spec datasets.md section 3)."""

from __future__ import annotations

from ovrsisbench.data.converters.base import (
    TOLERANCE,
    Converter,
    SourceFile,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
)
from ovrsisbench.data.converters.labels import PaletteCodec
from ovrsisbench.data.tiling import Tiling

# RGB colour -> native id (mmseg iSAIDDataset order, 0 = background)
PALETTE = {
    (0, 0, 0): 0,  # background
    (0, 0, 63): 1,  # ship
    (0, 63, 63): 2,  # storage tank
    (0, 63, 0): 3,  # baseball diamond
    (0, 63, 127): 4,  # tennis court
    (0, 63, 191): 5,  # basketball court
    (0, 63, 255): 6,  # ground track field
    (0, 127, 63): 7,  # bridge
    (0, 127, 127): 8,  # large vehicle
    (0, 0, 127): 9,  # small vehicle
    (0, 0, 191): 10,  # helicopter
    (0, 0, 255): 11,  # swimming pool
    (0, 191, 127): 12,  # roundabout
    (0, 127, 191): 13,  # soccer ball field
    (0, 127, 255): 14,  # plane
    (0, 100, 155): 15,  # harbor
}
SPLITS = ("train", "val")  # test masks are withheld


def _split_of(file: SourceFile) -> str | None:
    folders = [part.lower() for part in file.parts[:-1]]
    return next((split for split in SPLITS if split in folders), None)


class ISAIDConverter(Converter):
    dataset = "isaid"
    options_spec = {"tolerance": TOLERANCE}
    default_tiling = Tiling(896, 512, "clamp")
    download = (
        "the mmseg layout: train/images/part{1,2,3}.zip, train/Semantic_masks/images.zip, "
        "val/images/part1.zip, val/Semantic_masks/images.zip (or the same extracted)"
    )
    notes = (
        "default tiling = mmseg's iSAID converter (896 px windows, stride 512, last window "
        "clamped to the border, small images padded); the paper's 256 px iSAID-5i selection "
        "(18,076/6,363) is unpublished; use --source archive for the paper's files",
    )

    def wants_archive(self, logical: str) -> bool:
        return "test" not in [part.lower() for part in logical.split("/")[:-1]]

    def make_codec(self) -> PaletteCodec:
        return PaletteCodec(PALETTE, tolerance=self.options["tolerance"])

    def find_pairs(self, tree: SourceTree):
        def keyed(pattern: str) -> dict[str, SourceFile]:
            found = ((m["id"], f) for m, f in tree.matching(pattern) if _split_of(f))
            return index_unique(found, "image id")

        images = keyed(r"(?:.*/)?(?P<id>P\d+)\.png")
        labels = keyed(r"(?:.*/)?(?P<id>P\d+)_instance_color_RGB\.png")
        pairs, orphans = pair_files(images, labels)
        found = [SourcePair(key, image, label, _split_of(label)) for key, image, label in pairs]
        return found, orphans
