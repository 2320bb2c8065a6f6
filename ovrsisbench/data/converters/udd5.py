"""UDD5: drone JPEGs + index PNG labels, train/val (spec datasets.md section 7)."""

from __future__ import annotations

from ovrsisbench.data.converters.drone_index import SplitFolderConverter


class UDD5Converter(SplitFolderConverter):
    dataset = "udd5"
    splits = ("train", "val")
    skip_folder = "udd6"  # UDD6 uses a different class order
    download = (
        "UDD5/{train,val}/{src,gt} (src/<id>.JPG, gt/<id>.png), extracted or in a zip; "
        "a UDD6 folder beside it is ignored"
    )
    notes = (
        "full images, no tiling; the paper's 4,198 images (3,149/1,049) come from an "
        "unpublished tiling of the 160 public images",
    )
