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

SPLITS = ("train", "val")  # test masks are withheld


def _split_of(file: SourceFile) -> str | None:
    folders = [part.lower() for part in file.parts[:-1]]
    return next((split for split in SPLITS if split in folders), None)


class ISAIDConverter(Converter):
    dataset = "isaid"
    options_spec = {"tolerance": TOLERANCE}
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
        return self.palette_codec()

    def find_pairs(self, tree: SourceTree):
        def keyed(pattern: str) -> dict[str, SourceFile]:
            found = ((m["id"], f) for m, f in tree.matching(pattern) if _split_of(f))
            return index_unique(found, "image id")

        images = keyed(r"(?:.*/)?(?P<id>P\d+)\.png")
        labels = keyed(r"(?:.*/)?(?P<id>P\d+)_instance_color_RGB\.png")
        pairs, orphans = pair_files(images, labels)
        found = [SourcePair(key, image, label, _split_of(label)) for key, image, label in pairs]
        return found, orphans
