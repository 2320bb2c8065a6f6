"""Native class lists by dataset name, and the label value of unlabelled pixels.

Prepared labels keep every class the raw data distinguishes (index = native id, 255 = unlabelled);
vocabulary files (``protocols/vocab``) decide which native classes are scored, merged or ignored.
The supported datasets' classes come from their specs (``ovrsisbench.data.registry``).
"""

from ovrsisbench.data.registry import REGISTRY

IGNORE_INDEX = 255
"""Label value of unlabelled pixels in every prepared dataset (and after every lookup)."""

NATIVE_CLASSES: dict[str, tuple[str, ...]] = {name: spec.classes for name, spec in REGISTRY.items()}
"""Native classes of every supported dataset (from the registry)."""

SYNTHETIC_CLASSES: dict[str, tuple[str, ...]] = {
    "synthetic-source": ("background", "building", "road", "tree", "water"),
    "synthetic-target": ("background", "building", "road", "car", "field", "water"),
}
"""Generated demo datasets (``ovrsisbench demo``); not real data."""

KNOWN_CLASSES: dict[str, tuple[str, ...]] = {**NATIVE_CLASSES, **SYNTHETIC_CLASSES}
"""Every dataset name a vocabulary or protocol may refer to, with its native classes."""
