"""What UDD5 and VDD share: drone JPEGs (``src/*.JPG``) with index-PNG labels (``gt/*.png``) in
one folder per split (spec datasets.md sections 7 and 9); raw values are the native ids."""

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
