"""ISPRS Potsdam and Vaihingen: ortho tiles + colour-coded label TIFFs (spec sections 4 and 5).

Both use the ISPRS colour code; boundary pixels of the eroded labels are black and become 255.
Default tiling reproduces the paper's Potsdam count: 256 px, non-overlapping, remainder dropped
(38 tiles x 23 x 23 = 20,102 patches).
"""

from __future__ import annotations

from ovrsisbench.data.converters.base import (
    TOLERANCE,
    Converter,
    Option,
    SourceFile,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
)
from ovrsisbench.data.converters.labels import PaletteCodec
from ovrsisbench.data.converters.tiling import Tiling

# RGB colour -> native id, ISPRS order
PALETTE = {
    (255, 255, 255): 0,  # impervious surfaces
    (0, 0, 255): 1,  # building
    (0, 255, 255): 2,  # low vegetation
    (0, 255, 0): 3,  # tree
    (255, 255, 0): 4,  # car
    (255, 0, 0): 5,  # clutter / background
}
BOUNDARY = (0, 0, 0)  # eroded labels only: unlabelled, not off-palette

LABELS = Option(
    "full",
    "full: the complete reference labels; eroded: the labels without boundary pixels "
    "(boundaries become 255)",
    choices=("full", "eroded"),
)


class ISPRSConverter(Converter):
    """Shared by Potsdam and Vaihingen: palette, options, tiling, split lists and pairing."""

    options_spec = {"labels": LABELS, "tolerance": TOLERANCE}
    default_tiling = Tiling(256, 256, "drop")
    train_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()
    image_pattern = ""
    label_patterns: dict[str, str] = {}
    archive_patterns: dict[str, tuple[str, ...]] = {}

    def make_codec(self) -> PaletteCodec:
        # black marks the boundaries of the eroded labels only; in full labels it is off-palette
        unlabelled = (BOUNDARY,) if self.options["labels"] == "eroded" else ()
        return PaletteCodec(PALETTE, unlabelled, tolerance=self.options["tolerance"])

    @property
    def archives(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.archive_patterns[self.options["labels"]]

    def split_of(self, tile_id: str) -> str | None:
        if tile_id in self.train_ids:
            return "train"
        return "val" if tile_id in self.val_ids else None

    not_label_folders: tuple[str, ...] = ()  # folders whose files only look like labels

    def is_label(self, file: SourceFile) -> bool:
        return not any(part.lower() in self.not_label_folders for part in file.parts[:-1])

    def find_pairs(self, tree: SourceTree):
        images = index_unique(
            ((m["id"], f) for m, f in tree.matching(self.image_pattern)), "tile id"
        )
        label_pattern = self.label_patterns[self.options["labels"]]
        labels = index_unique(
            ((m["id"], f) for m, f in tree.matching(label_pattern) if self.is_label(f)),
            "tile id",
        )
        pairs, orphans = pair_files(images, labels)
        found = [
            SourcePair(f"{self.stem_prefix}{key}", image, label, self.split_of(key))
            for key, image, label in pairs
        ]
        return found, orphans


class PotsdamConverter(ISPRSConverter):
    dataset = "potsdam"
    stem_prefix = "top_potsdam_"
    not_label_folders = ("5_labels_for_participants",)  # the 24-tile subset
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


class VaihingenConverter(ISPRSConverter):
    dataset = "vaihingen"
    stem_prefix = "top_mosaic_09cm_area"
    bands = ("NIR", "R", "G")  # IRRG false colour: kept, never relabelled as RGB
    # labels share the images' file names; the participants' GT is a partial copy
    not_label_folders = ("top", "gts_for_participants", "dsm")
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
        "RGB); labels from the COMPLETE ground truth (gts_for_participants is ignored)",
        "tiling as Potsdam (256 px, non-overlapping, remainder dropped); whether this gives the "
        "paper's 2,254 patches is unverified",
    )
