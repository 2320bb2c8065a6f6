"""Dataset converters: one module per source dataset, the OVSISBench archive importer, and the
synthetic demo data. ``get_converter`` is the registry."""

from __future__ import annotations

from typing import Any

from ovrsisbench.choices import SOURCE_KINDS
from ovrsisbench.data.converters.base import Converter
from ovrsisbench.errors import UserError, did_you_mean


def converter_classes(kind: str) -> dict[str, type[Converter]]:
    """Converter class of every dataset for ``kind`` (raw download or OVSISBench archive)."""
    if kind == "archive":
        from ovrsisbench.data.converters.ovsisbench import ARCHIVE_IMPORTERS

        return dict(ARCHIVE_IMPORTERS)
    if kind != "raw":
        raise UserError(f"unknown --source '{kind}' (use {' or '.join(SOURCE_KINDS)})")
    from ovrsisbench.data.converters.dlrsd import DLRSDConverter
    from ovrsisbench.data.converters.isaid import ISAIDConverter
    from ovrsisbench.data.converters.loveda import LoveDAConverter
    from ovrsisbench.data.converters.potsdam import PotsdamConverter
    from ovrsisbench.data.converters.uavid import UAVidConverter
    from ovrsisbench.data.converters.udd5 import UDD5Converter
    from ovrsisbench.data.converters.vaihingen import VaihingenConverter
    from ovrsisbench.data.converters.vdd import VDDConverter

    classes = (
        DLRSDConverter, ISAIDConverter, PotsdamConverter, VaihingenConverter,
        UAVidConverter, UDD5Converter, LoveDAConverter, VDDConverter,
    )  # fmt: skip
    return {cls.dataset: cls for cls in classes}


def get_converter(dataset: str, kind: str = "raw", options: dict[str, Any] | None = None):
    """The converter of ``dataset`` from a ``kind`` source, with converter ``options``."""
    classes = converter_classes(kind)
    if dataset not in classes:
        raise UserError(
            f"unknown dataset '{dataset}'{did_you_mean(dataset, list(classes))} "
            f"(known: {', '.join(classes)})"
        )
    return classes[dataset](options)
