"""What a converter is: where it finds (image, label) pairs in a download, how it decodes labels.

The dataset's own facts (native classes, palette, default tiling, licence) are its registry
entry (``ovrsisbench.data.registry``); a converter module declares how its download is laid out
(file patterns, split rule, options) and one ``find_pairs`` function; the engine
(``ovrsisbench.data.converters.engine``) does the reading, tiling, writing, resuming and
verification for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ovrsisbench.data.converters.labels import DecodedLabel, IndexCodec, PaletteCodec
from ovrsisbench.data.registry import REGISTRY, RGB, DatasetSpec
from ovrsisbench.data.tiling import Tiling
from ovrsisbench.errors import DataError, UserError


class NothingFoundError(DataError):
    """The download holds no pair of this dataset (wrong folder, or not part of an archive)."""


@dataclass(frozen=True)
class SourceFile:
    """A file of the download: ``logical`` is its path under ``--src``, archives read as folders
    (``5_Labels_all.zip/top_potsdam_2_10_label.tif``); ``real`` is where it lies on disk."""

    logical: str
    real: Path

    @property
    def name(self) -> str:
        return self.logical.rsplit("/", 1)[-1]

    @property
    def parts(self) -> list[str]:
        return self.logical.split("/")


@dataclass(frozen=True)
class SourcePair:
    """One source image and its label; the engine writes it whole or as tiles of ``stem``."""

    stem: str
    image: SourceFile
    label: SourceFile
    split: str | None


class SourceTree:
    """Every file of a download (plain files and extracted archive members), by logical path."""

    def __init__(self, files: Iterable[SourceFile]) -> None:
        self.files = sorted(files, key=lambda f: f.logical)

    def __iter__(self) -> Iterator[SourceFile]:
        return iter(self.files)

    def matching(self, pattern: str) -> Iterator[tuple[re.Match, SourceFile]]:
        """Files whose logical path matches the regex ``pattern`` (full match, any case)."""
        regex = re.compile(pattern, re.IGNORECASE)
        for file in self.files:
            found = regex.fullmatch(file.logical)
            if found:
                yield found, file


class LabelCodec(Protocol):
    def decode(self, path: Path) -> DecodedLabel: ...


@dataclass(frozen=True)
class Option:
    """A converter-specific option, given as ``-o NAME=VALUE``."""

    default: Any
    help: str
    choices: tuple | None = None
    kind: type = str

    def parse(self, name: str, value: Any) -> Any:
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"option {name} must be an integer, got {value!r}")
        if self.kind is str and not isinstance(value, str):
            raise UserError(f"option {name} must be text, got {value!r}")
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(map(str, self.choices))
            raise UserError(f"option {name}={value!r} is not one of: {choices}")
        return value


TOLERANCE = Option(
    0,
    "off-palette colours within this many levels per channel of a palette colour take its "
    "class (counted as snapped); 0 = strict: they become 255 (counted as unmatched)",
    kind=int,
)


class Converter:
    """Base of every converter; subclasses set the class attributes and ``find_pairs``."""

    dataset: ClassVar[str]
    version: ClassVar[str] = "1"
    kind: ClassVar[str] = "raw"
    options_spec: ClassVar[dict[str, Option]] = {}
    checksums: ClassVar[dict[str, str]] = {}  # archive file name -> md5 published in the spec
    archives: ClassVar[tuple[str, ...]] = ("*",)  # fnmatch patterns of archive file names
    notes: ClassVar[tuple[str, ...]] = ()
    download: ClassVar[str] = ""  # what --src must hold, for error messages
    bands: ClassVar[tuple[str, ...]] = ("R", "G", "B")  # image bands in file order
    provenance: ClassVar[str] = (
        "converted by ovrsisbench from the official download: a benchmark version of its own, "
        "not the OVSISBench archive behind the published numbers"
    )

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options_spec))
        if unknown:
            known = ", ".join(self.options_spec) or "none"
            raise UserError(
                f"unknown option(s) {', '.join(unknown)} for {self.dataset} "
                f"({self.kind}); known: {known}"
            )
        self.options = {
            name: spec.parse(name, options[name]) if name in options else spec.default
            for name, spec in self.options_spec.items()
        }

    @property
    def spec(self) -> DatasetSpec:
        """This dataset's registry entry."""
        return REGISTRY[self.dataset]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def default_tiling(self) -> Tiling:
        return self.spec.tiling

    def wants_archive(self, logical: str) -> bool:
        """Whether to extract the archive at ``logical`` (others are left alone), by file name."""
        name = logical.rsplit("/", 1)[-1].lower()
        return any(fnmatch(name, pattern) for pattern in self.archives)

    def wants_member(self, logical: str) -> bool:
        """Whether to extract the archive member at ``logical`` (all by default)."""
        return True

    def find_pairs(self, tree: SourceTree) -> tuple[list[SourcePair], list[SourceFile]]:
        """The (image, label) pairs of the download, and the labels that have no image."""
        raise NotImplementedError

    def codec(self) -> LabelCodec:
        """The decoder of this dataset's raw labels (built once per converter)."""
        if not hasattr(self, "_codec"):
            self._codec = self.make_codec()
        return self._codec

    def make_codec(self) -> LabelCodec:
        raise NotImplementedError

    def palette_codec(self, unlabelled: tuple[RGB, ...] = ()) -> PaletteCodec:
        """Colour-coded labels decoded with the registry's palette and the ``tolerance`` option."""
        assert self.spec.palette is not None, f"{self.dataset} has no palette"
        colours = {colour: native for native, colour in enumerate(self.spec.palette)}
        return PaletteCodec(colours, unlabelled, tolerance=self.options["tolerance"])

    def identity_codec(self) -> IndexCodec:
        """Index labels whose raw values are the native ids (UDD5, VDD, LoveDA)."""
        return IndexCodec({value: value for value in range(len(self.classes))})

    def meta_extra(self) -> dict:
        """Extra ``meta.json`` fields."""
        return {"bands": list(self.bands)}

    def warnings(self) -> list[str]:
        """What the user should know about the pairs found (after ``find_pairs``)."""
        return []

    def nothing_found(self, src: Path) -> NothingFoundError:
        return NothingFoundError(
            f"{src}: no {self.dataset} image/label pairs found; expected {self.download}"
        )


def pair_files(
    images: dict[str, SourceFile], labels: dict[str, SourceFile]
) -> tuple[list[tuple[str, SourceFile, SourceFile]], list[SourceFile]]:
    """Match images and labels by key; return (key, image, label) sorted by key, and the labels
    without an image (images without a label are unlabelled data, not a problem)."""
    pairs = [(key, images[key], labels[key]) for key in sorted(labels) if key in images]
    orphans = [labels[key] for key in sorted(labels) if key not in images]
    return pairs, orphans


Clash = Callable[[str, SourceFile, SourceFile], str]
"""Why two files of a download give one key: ``(key, file, other) -> cause`` for the error."""


def index_unique(
    files: Iterable[tuple[str, SourceFile]], what: str, clash: Clash | None = None
) -> dict[str, SourceFile]:
    """``{key: file}``; DataError naming both files when two share a key, with the likely cause
    (``clash``, by default ``same_download_twice`` or else names that must be unique)."""
    index: dict[str, SourceFile] = {}
    for key, file in files:
        other = index.setdefault(key, file)
        if other is not file:
            cause = (clash or _unique_names)(key, file, other)
            raise DataError(f"{file.logical}: {what} '{key}' also names {other.logical}; {cause}")
    return index


def same_download_twice(file: SourceFile, other: SourceFile) -> str:
    """The cause for two files at the same place of a download: the download is there twice."""
    how = "an archive beside its extracted copy" if _is_copy(file, other) else "two copies of it"
    return f"the same download twice ({how}?); give only one"


def _is_copy(file: SourceFile, other: SourceFile) -> bool:
    """One path ends with the other (``Train.zip/Train/x.png`` and ``Train/x.png``)."""
    short, long = sorted((file.parts, other.parts), key=len)
    return long[len(long) - len(short) :] == short


def _unique_names(key: str, file: SourceFile, other: SourceFile) -> str:
    if _is_copy(file, other):
        return same_download_twice(file, other)
    return "names must be unique across the dataset"
