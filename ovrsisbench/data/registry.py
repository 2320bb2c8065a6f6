"""The supported datasets: one ``DatasetSpec`` each, the only list of them and of their facts.

Everything else reads this table: the command line (``prepare`` names and help), the converter
lookup (``converters.converter_classes``), ``prepare all`` (download folder names), the
OVSISBench archive importer (where each dataset lies in the archive) and the native class lists
(``native``). Adding a dataset = one entry here + one converter module.

Light to import (no converter, no numpy): converters are named as ``"module:Class"`` and
imported only when asked for. Facts from ``shared/spec/datasets.md`` (sections 2-10).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from ovrsisbench.data.tiling import Tiling

if TYPE_CHECKING:
    from ovrsisbench.data.converters.base import Converter

RGB = tuple[int, int, int]
_CONVERTERS = "ovrsisbench.data.converters"


@dataclass(frozen=True)
class ArchiveFolders:
    """Where one dataset lies in the OVSISBench archive, and how its V1 ids map to native ids."""

    images: str  # "all" image folder, relative to the archive root
    labels: str
    image_ext: str  # case-sensitive, as registered
    v1_classes: int
    native_offset: int = 0  # native id = V1 id + offset
    split_root: str | None = None  # <X>_split with {train,val}/{imgs|images} and D2masks
    bands: tuple[str, ...] = ("R", "G", "B")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: what its labels mean and where ``prepare`` finds and how it cuts it."""

    name: str
    classes: tuple[str, ...]  # native classes: index = label id (255 = unlabelled)
    converter: str  # "module:Class" of the converter of the official download
    licence: str  # the terms of the data (and of everything prepared from it)
    raw_folders: tuple[str, ...]  # folder names (any case) of its download for `prepare all`
    tiling: Tiling = Tiling()  # default tiling of the official download (none: whole images)
    palette: tuple[RGB, ...] | None = None  # colour-coded labels: RGB of each native class
    archive: ArchiveFolders | None = None  # where the OVSISBench archive holds it

    def __post_init__(self) -> None:
        if self.palette is not None and len(self.palette) != len(self.classes):
            raise ValueError(
                f"{self.name}: {len(self.palette)} colours for {len(self.classes)} classes"
            )

    def converter_class(self) -> type[Converter]:
        """The converter class of the official download (its module is imported now)."""
        module, _, name = self.converter.partition(":")
        return getattr(importlib.import_module(module), name)


def _names(table: tuple[tuple[str, RGB], ...]) -> tuple[str, ...]:
    return tuple(name for name, _ in table)


def _colours(table: tuple[tuple[str, RGB], ...]) -> tuple[RGB, ...]:
    return tuple(colour for _, colour in table)


# raw values 1..17 minus one, V1 order; the colours of RGB-coded DLRSD labels
_DLRSD = (
    ("airplane", (166, 202, 240)),
    ("bare soil", (128, 128, 0)),
    ("buildings", (0, 0, 128)),
    ("cars", (255, 0, 0)),
    ("chaparral", (0, 128, 0)),
    ("court", (128, 0, 0)),
    ("dock", (255, 233, 233)),
    ("field", (160, 160, 164)),
    ("grass", (0, 128, 128)),
    ("mobile home", (90, 87, 255)),
    ("pavement", (255, 255, 0)),
    ("sand", (255, 192, 0)),
    ("sea", (0, 0, 255)),
    ("ship", (255, 0, 192)),
    ("tanks", (128, 0, 128)),
    ("trees", (0, 255, 0)),
    ("water", (0, 255, 255)),
)
# mmseg iSAIDDataset ids (0 = background) and palette, V1 names
_ISAID = (
    ("background", (0, 0, 0)),
    ("ship", (0, 0, 63)),
    ("storage tank", (0, 63, 63)),
    ("baseball diamond", (0, 63, 0)),
    ("tennis court", (0, 63, 127)),
    ("basketball court", (0, 63, 191)),
    ("ground track field", (0, 63, 255)),
    ("bridge", (0, 127, 63)),
    ("large vehicle", (0, 127, 127)),
    ("small vehicle", (0, 0, 127)),
    ("helicopter", (0, 0, 191)),
    ("swimming pool", (0, 0, 255)),
    ("roundabout", (0, 191, 127)),
    ("soccer ball field", (0, 127, 191)),
    ("plane", (0, 127, 255)),
    ("harbor", (0, 100, 155)),
)
# ISPRS order; boundary pixels of the eroded labels (black) are 255, not a class
_ISPRS = (
    ("impervious surfaces", (255, 255, 255)),
    ("building", (0, 0, 255)),
    ("low vegetation", (0, 255, 255)),
    ("tree", (0, 255, 0)),
    ("car", (255, 255, 0)),
    ("clutter", (255, 0, 0)),
)
_ISPRS_LICENCE = "ISPRS benchmark data for research, given on request; redistribution not allowed"
# V1 order, which differs from the UAVid toolkit's trainId order; official colours (an unknown
# colour is 255 and counted, never clutter as in the toolkit)
_UAVID = (
    ("background clutter", (0, 0, 0)),
    ("building", (128, 0, 0)),
    ("road", (128, 64, 128)),
    ("tree", (0, 128, 0)),
    ("low vegetation", (128, 128, 0)),
    ("moving car", (64, 0, 128)),
    ("static car", (192, 0, 192)),
    ("human", (64, 64, 0)),
)
_ISPRS_TILING = Tiling(256, 256, "drop")  # the paper's Potsdam count: 38 x 23 x 23 = 20,102

_SPECS = (
    DatasetSpec(
        "dlrsd",
        _names(_DLRSD),
        f"{_CONVERTERS}.dlrsd:DLRSDConverter",
        "DLRSD terms not established; UC Merced imagery reportedly from the USGS National Map; "
        "do not redistribute",
        raw_folders=("dlrsd",),
        palette=_colours(_DLRSD),
        archive=ArchiveFolders("DLRSD/imgs", "DLRSD/D2masks", "jpg", 17, split_root="DLRSD_split"),
    ),
    DatasetSpec(
        "isaid",
        _names(_ISAID),
        f"{_CONVERTERS}.isaid:ISAIDConverter",
        "DOTA / iSAID: academic use only (reported); do not redistribute",
        raw_folders=("isaid",),
        tiling=Tiling(896, 512, "clamp"),  # mmseg's iSAID converter
        palette=_colours(_ISAID),
        # V1 drops iSAID's background: V1 0..14 = native 1..15, background pixels are already 255
        archive=ArchiveFolders("iSAID/imgs", "iSAID/D2masks", "png", 15, 1, "iSAID_split"),
    ),
    DatasetSpec(
        "potsdam",
        _names(_ISPRS),
        f"{_CONVERTERS}.potsdam:PotsdamConverter",
        _ISPRS_LICENCE,
        raw_folders=("potsdam",),
        tiling=_ISPRS_TILING,
        palette=_colours(_ISPRS),
        archive=ArchiveFolders("Potsdam/imgs", "Potsdam/D2masks", "png", 6),
    ),
    DatasetSpec(
        "vaihingen",
        _names(_ISPRS),
        f"{_CONVERTERS}.vaihingen:VaihingenConverter",
        _ISPRS_LICENCE,
        raw_folders=("vaihingen",),
        tiling=_ISPRS_TILING,
        palette=_colours(_ISPRS),
        # IRRG like the raw tiles (paper Fig. 2(c) shows red vegetation; unverified)
        archive=ArchiveFolders(
            "Vaihingen/imgs", "Vaihingen/D2masks", "png", 6, bands=("NIR", "R", "G")
        ),
    ),
    DatasetSpec(
        "uavid",
        _names(_UAVID),
        f"{_CONVERTERS}.uavid:UAVidConverter",
        "CC BY-NC-SA 4.0 as reported by third parties (official terms unverified); do not "
        "redistribute",
        raw_folders=("uavid",),
        palette=_colours(_UAVID),
        archive=ArchiveFolders("uavid/Images", "uavid/Labels", "png", 8),
    ),
    DatasetSpec(
        "udd5",
        ("vegetation", "building", "road", "vehicle", "other"),  # raw index values (not UDD6)
        f"{_CONVERTERS}.udd5:UDD5Converter",
        "non-commercial use only (dataset README); do not redistribute",
        raw_folders=("udd5", "udd"),
        archive=ArchiveFolders("UDD5/all/src", "UDD5/all/gt", "JPG", 5),
    ),
    DatasetSpec(
        "loveda",
        # raw index values: 0 = no-data
        ("no-data", "background", "building", "road", "water", "barren", "forest", "agriculture"),
        f"{_CONVERTERS}.loveda:LoveDAConverter",
        "CC BY-NC-SA 4.0, academic use only, commercial use prohibited; Google Earth terms apply",
        raw_folders=("loveda",),
        archive=ArchiveFolders("LoveDA/images_png", "LoveDA/masks_png", "png", 8),
    ),
    DatasetSpec(
        "vdd",
        ("other", "wall", "road", "vegetation", "vehicle", "roof", "water"),  # raw index values
        f"{_CONVERTERS}.vdd:VDDConverter",
        "non-commercial use only; the dataset and modified versions must not be distributed "
        "(dataset README; its Hugging Face card says CC BY 4.0: the stricter terms apply)",
        raw_folders=("vdd",),
        archive=ArchiveFolders("VDD/src", "VDD/gt", "JPG", 7),
    ),
)

REGISTRY: MappingProxyType[str, DatasetSpec] = MappingProxyType({s.name: s for s in _SPECS})
"""Every supported dataset by name, in the paper's order."""

DATASETS: tuple[str, ...] = tuple(REGISTRY)
"""The dataset names, in the paper's order."""
