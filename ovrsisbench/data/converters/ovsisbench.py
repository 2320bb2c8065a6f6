"""Importer of the OVSISBench archive released by the RSKT-Seg authors (spec datasets.md 10).

The archive holds, per dataset, an "all" folder of images and index labels in V1 ids (the
paper's label spaces), and for DLRSD and iSAID also ``<X>_split/{train,val}``. Pairing follows the
official loader (top-level files with the registered extension, case-sensitive, matched by
stem), with every pair's stem checked; labels are mapped from V1 ids back to native ids.
Where each dataset lies in the archive is its registry entry's ``archive``
(``ovrsisbench.data.registry``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ovrsisbench.data.archives import is_archive
from ovrsisbench.data.converters.base import (
    Converter,
    SourceFile,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
)
from ovrsisbench.data.converters.labels import DecodedLabel, IndexCodec
from ovrsisbench.data.native import IGNORE_INDEX
from ovrsisbench.data.registry import REGISTRY, ArchiveFolders
from ovrsisbench.data.tiling import Tiling
from ovrsisbench.errors import DataError

SPLIT_IMAGE_FOLDERS = ("imgs", "images")  # a third-party audit lists "images" for iSAID


@dataclass(frozen=True)
class StrictV1Codec:
    """V1 index labels -> native ids; any other value makes the file a bad input."""

    folders: ArchiveFolders

    def decode(self, path: Path) -> DecodedLabel:
        offset, count = self.folders.native_offset, self.folders.v1_classes
        codec = IndexCodec({v1: v1 + offset for v1 in range(count)}, unlabelled=(IGNORE_INDEX,))
        decoded = codec.decode(path)
        if decoded.unmatched:
            values = ", ".join(decoded.unmatched_values)
            raise DataError(
                f"{path}: label values [{values}] are not V1 ids 0..{count - 1} or {IGNORE_INDEX}"
            )
        return decoded


def _top_level(tree: SourceTree, folder: str, ext: str) -> dict[str, SourceFile]:
    """Files directly inside ``folder`` (at any depth under --src) ending in ``.ext`` exactly."""
    pattern = re.compile(rf"(?:.*/)?{re.escape(folder)}/(?P<stem>[^/]+)\.{re.escape(ext)}")
    found = ((m["stem"], f) for f in tree for m in [pattern.fullmatch(f.logical)] if m)
    return index_unique(found, f"stem in {folder}")


class OVSISBenchImporter(Converter):
    """Imports one dataset of the archive; ``for_dataset`` makes the class of each dataset."""

    kind = "archive"
    folders: ArchiveFolders
    provenance = "OVSISBench archive of the RSKT-Seg authors: the files behind the paper's numbers"
    notes = (
        "labels mapped from the archive's V1 ids to native ids; the UAVid archive labels are "
        "assumed to follow the V1 class order (unverified)",
    )

    @classmethod
    def for_dataset(cls, dataset: str) -> type[OVSISBenchImporter]:
        folders = REGISTRY[dataset].archive
        assert folders is not None, f"{dataset} is not in the archive"
        download = (
            f"the OVSISBench root with {folders.images}/*.{folders.image_ext} and "
            f"{folders.labels}/*.png (or an archive of it)"
        )
        return type(
            f"{cls.__name__}[{dataset}]",
            (cls,),
            {"dataset": dataset, "folders": folders, "download": download, "bands": folders.bands},
        )

    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        self.split_only: list[str] = []  # stems found only in a split folder (find_pairs)
        self.unlabelled: list[str] = []  # images without a label (find_pairs)

    @property
    def default_tiling(self) -> Tiling:
        """Whole images: the archive's files are the paper's images as they are."""
        return Tiling()

    def wants_member(self, logical: str) -> bool:
        """Members of this dataset's folders only (the archive holds all eight datasets)."""
        folders = {self.folders.images.split("/")[0], self.folders.split_root}
        return is_archive(Path(logical)) or not folders.isdisjoint(logical.split("/"))

    def make_codec(self) -> StrictV1Codec:
        return StrictV1Codec(self.folders)

    def _pairs(self, tree: SourceTree, images: str, labels: str):
        """Pairs by stem (never by position, which mispairs silently when names differ); an
        image without a label is recorded, since the archive should have none."""
        image_files = _top_level(tree, images, self.folders.image_ext)
        label_files = _top_level(tree, labels, "png")
        self.unlabelled += sorted(f.logical for s, f in image_files.items() if s not in label_files)
        return pair_files(image_files, label_files)

    def find_pairs(self, tree: SourceTree):
        pairs, orphans = self._pairs(tree, self.folders.images, self.folders.labels)
        found = {stem: SourcePair(stem, image, label, None) for stem, image, label in pairs}
        for split, split_pairs, split_orphans in self._split_pairs(tree):
            orphans += split_orphans
            for stem, image, label in split_pairs:
                if stem not in found:
                    self.split_only.append(stem)
                pair = found.get(stem)
                if pair is not None and pair.split not in (None, split):
                    raise DataError(
                        f"{label.logical}: stem '{stem}' is in both the {pair.split} and the "
                        f"{split} split"
                    )
                base = pair or SourcePair(stem, image, label, None)
                found[stem] = SourcePair(stem, base.image, base.label, split)
        return [found[stem] for stem in sorted(found)], orphans

    def _split_pairs(self, tree: SourceTree):
        root = self.folders.split_root
        if root is None:
            return
        for split in ("train", "val"):
            for folder in SPLIT_IMAGE_FOLDERS:
                pairs, orphans = self._pairs(
                    tree, f"{root}/{split}/{folder}", f"{root}/{split}/D2masks"
                )
                if pairs:
                    yield split, pairs, orphans
                    break

    def meta_extra(self) -> dict:
        archive = {
            "split_only_stems": sorted(self.split_only),
            "unlabelled_images": self.unlabelled,
        }
        return {**super().meta_extra(), "archive": archive}

    def warnings(self) -> list[str]:
        warnings = []
        if self.split_only:
            warnings.append(
                f"{len(self.split_only)} name(s) only in {self.folders.split_root}: split 'all' "
                f"is more than the paper's {self.folders.images} (listed in meta.json)"
            )
        if self.unlabelled:
            warnings.append(
                f"{len(self.unlabelled)} image(s) without a label left out (listed in meta.json)"
            )
        return warnings


ARCHIVE_IMPORTERS = {
    name: OVSISBenchImporter.for_dataset(name) for name, spec in REGISTRY.items() if spec.archive
}
"""The importer class of every dataset the archive holds (registry entries with ``archive``)."""
