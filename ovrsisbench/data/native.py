"""Native class lists of the supported datasets: the one place that says what label id means what.

Prepared labels keep every class the raw data distinguishes (index = native id, 255 = unlabelled);
vocabulary files (``protocols/vocab``) decide which native classes are scored, merged or ignored.
Sources: ``shared/spec/datasets.md`` (the class tables of sections 2-9).
"""

DATASETS = ("dlrsd", "isaid", "potsdam", "vaihingen", "uavid", "udd5", "loveda", "vdd")

_ISPRS = ("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter")

IGNORE_INDEX = 255
"""Label value of unlabelled pixels in every prepared dataset (and after every lookup)."""

NATIVE_CLASSES: dict[str, tuple[str, ...]] = {
    # raw values 1..17 minus one, V1 order
    "dlrsd": (
        "airplane",
        "bare soil",
        "buildings",
        "cars",
        "chaparral",
        "court",
        "dock",
        "field",
        "grass",
        "mobile home",
        "pavement",
        "sand",
        "sea",
        "ship",
        "tanks",
        "trees",
        "water",
    ),
    # mmseg iSAIDDataset ids (0 = background), V1 names
    "isaid": (
        "background",
        "ship",
        "storage tank",
        "baseball diamond",
        "tennis court",
        "basketball court",
        "ground track field",
        "bridge",
        "large vehicle",
        "small vehicle",
        "helicopter",
        "swimming pool",
        "roundabout",
        "soccer ball field",
        "plane",
        "harbor",
    ),
    # ISPRS order; boundary pixels of the eroded labels are 255, not a class
    "potsdam": _ISPRS,
    "vaihingen": _ISPRS,
    # V1 order, which differs from the UAVid toolkit's trainId order
    "uavid": (
        "background clutter",
        "building",
        "road",
        "tree",
        "low vegetation",
        "moving car",
        "static car",
        "human",
    ),
    # raw index values unchanged (UDD5, not UDD6)
    "udd5": ("vegetation", "building", "road", "vehicle", "other"),
    # raw index values unchanged: 0 = no-data
    "loveda": (
        "no-data",
        "background",
        "building",
        "road",
        "water",
        "barren",
        "forest",
        "agriculture",
    ),
    # raw index values unchanged
    "vdd": ("other", "wall", "road", "vegetation", "vehicle", "roof", "water"),
}

SYNTHETIC_CLASSES: dict[str, tuple[str, ...]] = {
    "synthetic-source": ("background", "building", "road", "tree", "water"),
    "synthetic-target": ("background", "building", "road", "car", "field", "water"),
}
"""Generated demo datasets (``ovrsisbench demo``); not real data."""

KNOWN_CLASSES: dict[str, tuple[str, ...]] = {**NATIVE_CLASSES, **SYNTHETIC_CLASSES}
"""Every dataset name a vocabulary or protocol may refer to, with its native classes."""
