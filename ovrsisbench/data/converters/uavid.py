"""UAVid: 4K drone frames + colour-coded labels (spec datasets.md section 6)."""

from __future__ import annotations

from ovrsisbench.data.converters.base import (
    TOLERANCE,
    Converter,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
)
from ovrsisbench.data.converters.labels import PaletteCodec

_FRAME = r"(?:.*/)?uavid_(?P<split>train|val)/(?P<seq>seq\d+)/{folder}/(?P<frame>[^/]+)\.png"


class UAVidConverter(Converter):
    dataset = "uavid"
    options_spec = {"tolerance": TOLERANCE}
    download = (
        "uavid_train/ and uavid_val/ (seq<N>/Images/<frame>.png, seq<N>/Labels/<frame>.png), "
        "in any folder or zip; uavid_test has no labels and is ignored"
    )
    notes = (
        "full frames, no tiling (as the V1 registry); the paper's 300 images (200/100) do not "
        "match the 200/70 labelled public frames",
    )

    def make_codec(self) -> PaletteCodec:
        return self.palette_codec()

    def find_pairs(self, tree: SourceTree):
        def keyed(folder: str):
            found = tree.matching(_FRAME.format(folder=folder))
            return index_unique(
                ((f"{m['split'].lower()}_{m['seq']}_{m['frame']}", f) for m, f in found), "frame"
            )

        pairs, orphans = pair_files(keyed("Images"), keyed("Labels"))
        return [
            SourcePair(stem, image, label, stem.split("_", 1)[0]) for stem, image, label in pairs
        ], orphans
