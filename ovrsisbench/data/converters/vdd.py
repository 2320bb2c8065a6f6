"""VDD: drone JPEGs + index PNG labels, train/val/test (spec datasets.md section 9)."""

from __future__ import annotations

from ovrsisbench.data.converters.drone_index import SplitFolderConverter


class VDDConverter(SplitFolderConverter):
    dataset = "vdd"
    splits = ("train", "val", "test")
    download = "VDD/{train,val,test}/{src,gt} (src/<name>.JPG, gt/<name>.png), extracted or zipped"
    notes = (
        "full images, no tiling; the paper's 7,992 images (5,994/1,998) come from an "
        "unpublished tiling (about 20 tiles per image)",
    )
