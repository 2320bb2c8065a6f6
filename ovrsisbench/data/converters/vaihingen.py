"""ISPRS Vaihingen: IRRG true orthophotos + COMPLETE colour labels (spec datasets.md section 5)."""

from __future__ import annotations

from ovrsisbench.data.converters.isprs import ISPRSConverter


class VaihingenConverter(ISPRSConverter):
    dataset = "vaihingen"
    stem_prefix = "top_mosaic_09cm_area"
    bands = ("NIR", "R", "G")  # IRRG false colour: kept, never relabelled as RGB
    # labels share the images' file names; the participants' GTs (full and eroded) are partial
    # copies
    not_label_folders = ("top", "gts_for_participants", "gts_eroded_for_participants", "dsm")
    train_ids = tuple("1 11 13 15 17 21 23 26 28 3 30 32 34 37 5 7".split())
    val_ids = tuple("6 24 35 16 14 22 10 4 2 20 8 31 33 27 38 12 29".split())
    image_pattern = r"(?:.*/)?top/top_mosaic_09cm_area(?P<id>\d+)\.tif"
    label_patterns = {
        "full": r"(?:.*/)?top_mosaic_09cm_area(?P<id>\d+)\.tif",
        "eroded": r"(?:.*/)?top_mosaic_09cm_area(?P<id>\d+)_noBoundary\.tif",
    }
    archive_patterns = {
        "full": ("isprs_semantic_labeling_vaihingen.zip", "*ground_truth_complete.zip"),
        "eroded": ("isprs_semantic_labeling_vaihingen.zip", "*ground_truth_eroded_complete.zip"),
    }
    checksums = {
        "ISPRS_semantic_labeling_Vaihingen.zip": "462b8dca7b6fa9eaf729840f0cdfc7f3",
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip": (
            "4802dd6326e2727a352fb735be450277"
        ),
    }
    download = (
        "ISPRS_semantic_labeling_Vaihingen.zip (top/top_mosaic_09cm_area<N>.tif) and "
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip (with -o labels=eroded: "
        "..._ground_truth_eroded_COMPLETE.zip), or the same extracted"
    )
    notes = (
        "images are IRRG false colour (bands NIR, R, G, kept in that order; there is no true "
        "RGB); labels from the COMPLETE ground truth (gts_for_participants and "
        "gts_eroded_for_participants are ignored)",
        "tiling as Potsdam (256 px, non-overlapping, remainder dropped); whether this gives the "
        "paper's 2,254 patches is unverified",
    )
