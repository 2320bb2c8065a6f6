"""What ISPRS Potsdam and Vaihingen share: ortho tiles + colour-coded label TIFFs (spec sections
4 and 5) in the ISPRS colour code (the registry's palette; boundary pixels of the eroded labels
are black and become 255), label variants, tile-id splits and pairing.
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

BOUNDARY = (0, 0, 0)  # eroded labels only: unlabelled, not off-palette

LABELS = Option(
    "full",
    "full: the complete reference labels; eroded: the labels without boundary pixels "
    "(boundaries become 255)",
    choices=("full", "eroded"),
)


class ISPRSConverter(Converter):
    """Shared by Potsdam and Vaihingen: options, label variants, split lists and pairing."""

    options_spec = {"labels": LABELS, "tolerance": TOLERANCE}
    train_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()
    image_pattern = ""
    label_patterns: dict[str, str] = {}
    archive_patterns: dict[str, tuple[str, ...]] = {}

    def make_codec(self) -> PaletteCodec:
        # black marks the boundaries of the eroded labels only; in full labels it is off-palette
        unlabelled = (BOUNDARY,) if self.options["labels"] == "eroded" else ()
        return self.palette_codec(unlabelled)

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
