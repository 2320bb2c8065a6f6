"""UDD5 and VDD: drone JPEGs (``src/*.JPG``) with index-PNG labels (``gt/*.png``) per split folder
(spec datasets.md sections 7 and 9). Raw values are the native ids."""

from __future__ import annotations

from ovrsisbench.data.converters.base import (
    Converter,
    SourceFile,
    SourcePair,
    SourceTree,
    index_unique,
    pair_files,
)
from ovrsisbench.data.converters.labels import IndexCodec


class SplitFolderConverter(Converter):
    """``<split>/src/<id>.JPG`` + ``<split>/gt/<id>.png``; stems must be unique across splits."""

    splits: tuple[str, ...] = ()
    skip_folder = ""  # a sibling dataset shipped in the same download

    def make_codec(self) -> IndexCodec:
        return self.identity_codec()

    def _skipped(self, name: str) -> bool:
        """A path component naming the sibling dataset (a folder, or an archive like UDD6.zip)."""
        return bool(self.skip_folder) and name.lower().split(".")[0] == self.skip_folder

    def _keep(self, file: SourceFile) -> bool:
        return not any(self._skipped(part) for part in file.parts)

    def wants_archive(self, logical: str) -> bool:
        return not any(self._skipped(part) for part in logical.split("/"))

    def find_pairs(self, tree: SourceTree):
        splits = "|".join(self.splits)

        def keyed(folder: str, ext: str) -> dict[str, SourceFile]:
            pattern = rf"(?:.*/)?(?P<split>{splits})/{folder}/(?P<id>[^/]+)\.{ext}"
            found = ((m["id"], f) for m, f in tree.matching(pattern) if self._keep(f))
            return index_unique(found, "image name")

        pairs, orphans = pair_files(keyed("src", "jpe?g"), keyed("gt", "png"))
        return [
            SourcePair(stem, image, label, label.parts[-3].lower()) for stem, image, label in pairs
        ], orphans


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


class VDDConverter(SplitFolderConverter):
    dataset = "vdd"
    splits = ("train", "val", "test")
    download = "VDD/{train,val,test}/{src,gt} (src/<name>.JPG, gt/<name>.png), extracted or zipped"
    notes = (
        "full images, no tiling; the paper's 7,992 images (5,994/1,998) come from an "
        "unpublished tiling (about 20 tiles per image)",
    )
