"""DLRSD: UC Merced Land Use images (TIFF) + DLRSD dense labels (spec datasets.md section 2)."""

from __future__ import annotations

from ovrsisbench.data.converters.base import (
    TOLERANCE,
    Converter,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
)
from ovrsisbench.data.converters.labels import IndexCodec, IndexOrPaletteCodec

FIRST_VAL_NUMBER = 80  # no official split: per scene, images 00-79 train, 80-99 val

_SCENE_FILE = r"(?:.*/)?(?P<scene>[a-z]+)/(?P<stem>(?P=scene)(?P<number>\d\d))\.{ext}"


class DLRSDConverter(Converter):
    dataset = "dlrsd"
    options_spec = {"tolerance": TOLERANCE}
    checksums = {"UCMerced_LandUse.zip": "5b7ec56793786b6dc8a908e8854ac0e4"}
    download = (
        "the UC Merced images (UCMerced_LandUse.zip or UCMerced_LandUse/Images/<scene>/"
        "<scene>NN.tif) and the DLRSD labels (<scene>/<scene>NN.png)"
    )
    notes = (
        "no official split: within each scene, images 00-79 are train and 80-99 val",
        "the paper's 7,002 DLRSD images (5,601/1,401) cannot be reproduced from the public "
        "2,100 images; use --source archive for the paper's files",
    )

    def make_codec(self) -> IndexOrPaletteCodec:
        return IndexOrPaletteCodec(
            IndexCodec({raw: raw - 1 for raw in range(1, 18)}, unlabelled=(0,)),
            self.palette_codec(),
        )

    def find_pairs(self, tree: SourceTree):
        images = index_unique(
            ((m["stem"], f) for m, f in tree.matching(_SCENE_FILE.format(ext="tiff?"))), "image"
        )
        labels = index_unique(
            ((m["stem"], f) for m, f in tree.matching(_SCENE_FILE.format(ext="png"))), "label"
        )
        pairs, orphans = pair_files(images, labels)
        return [
            SourcePair(stem, image, label, _split(stem)) for stem, image, label in pairs
        ], orphans


def _split(stem: str) -> str:
    return "train" if int(stem[-2:]) < FIRST_VAL_NUMBER else "val"
