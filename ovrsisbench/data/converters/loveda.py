"""LoveDA: Urban and Rural 1024 px PNG images with index masks (spec datasets.md section 8)."""

from __future__ import annotations

from ovrsisbench.data.converters.base import (
    Converter,
    SourceFile,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
    same_download_twice,
)
from ovrsisbench.data.converters.labels import IndexCodec

_FILE = r"(?:.*/)?(?P<split>train|val)/(?:urban|rural)/{folder}/(?P<id>\d+)\.png"


def _id_clash(key: str, file: SourceFile, other: SourceFile) -> str:
    """Outputs are named by id alone: an id in two places of Train/Val x Urban/Rural."""
    places = sorted(f"{f.parts[-4]}/{f.parts[-3]}" for f in (file, other))
    if places[0].lower() == places[1].lower():
        return same_download_twice(file, other)
    return (
        f"id {key} is in both {places[0]} and {places[1]}, but outputs are named by id alone and "
        "the official LoveDA never repeats an id across Train/Val and Urban/Rural: one of them "
        "is not from the official download (a renumbered copy or another project's test "
        "fixture?)"
    )


class LoveDAConverter(Converter):
    dataset = "loveda"
    checksums = {
        "Train.zip": "de2b196043ed9b4af1690b3f9a7d558f",
        "Val.zip": "84cae2577468ff0b5386758bb386d31d",
    }
    download = (
        "Train.zip and Val.zip from Zenodo (Train|Val/Urban|Rural/images_png|masks_png/<id>.png), "
        "or the same extracted; Test has no masks and is ignored"
    )
    notes = (
        "raw mask values are the native ids: 0 = no-data is a native class (the V1 vocabulary "
        "scores it; the loveda-clean vocabulary ignores it)",
        "full 1024 px images, no tiling; the paper's 18,000 images (14,168/3,832) do not match "
        "the 4,191 labelled public images",
    )

    def wants_archive(self, logical: str) -> bool:
        return not logical.lower().endswith("test.zip")

    def make_codec(self) -> IndexCodec:
        return self.identity_codec()

    def find_pairs(self, tree: SourceTree):
        def keyed(folder: str) -> dict[str, SourceFile]:
            found = tree.matching(_FILE.format(folder=folder))
            return index_unique(((m["id"], f) for m, f in found), "image id", _id_clash)

        pairs, orphans = pair_files(keyed("images_png"), keyed("masks_png"))
        return [
            SourcePair(stem, image, label, label.parts[-4].lower()) for stem, image, label in pairs
        ], orphans
