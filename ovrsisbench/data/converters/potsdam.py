"""ISPRS Potsdam: 2_Ortho_RGB tiles + 5_Labels_all colour labels (spec datasets.md section 4)."""

from __future__ import annotations

from ovrsisbench.data.converters.isprs import ISPRSConverter


class PotsdamConverter(ISPRSConverter):
    dataset = "potsdam"
    stem_prefix = "top_potsdam_"
    # the participants' 24-tile subsets (full and eroded) share the label file names
    not_label_folders = ("5_labels_for_participants", "5_labels_for_participants_no_boundary")
    train_ids = tuple(
        "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 6_10 6_11 6_12 6_7 6_8 6_9 "
        "7_10 7_11 7_12 7_7 7_8 7_9".split()
    )
    val_ids = tuple("5_15 6_15 6_13 3_13 4_14 6_14 5_14 2_13 4_15 2_14 5_13 4_13 3_14 7_13".split())
    image_pattern = r"(?:.*/)?top_potsdam_(?P<id>\d+_\d+)_RGB\.tif"
    label_patterns = {
        "full": r"(?:.*/)?top_potsdam_(?P<id>\d+_\d+)_label\.tif",
        "eroded": r"(?:.*/)?top_potsdam_(?P<id>\d+_\d+)_label_noBoundary\.tif",
    }
    archive_patterns = {
        "full": ("2_ortho_rgb.zip", "5_labels_all.zip", "potsdam*.zip"),
        "eroded": ("2_ortho_rgb.zip", "5_labels_all_noboundary.zip", "potsdam*.zip"),
    }
    download = (
        "2_Ortho_RGB.zip (top_potsdam_<r>_<c>_RGB.tif) and 5_Labels_all.zip "
        "(top_potsdam_<r>_<c>_label.tif; with -o labels=eroded: 5_Labels_all_noBoundary.zip), "
        "or the same extracted"
    )
    notes = (
        "images from 2_Ortho_RGB (true RGB); 256 px non-overlapping tiles, remainder dropped: "
        "reproduces the paper's 20,102 patches from 38 tiles (scheme inferred from the count)",
    )
