"""Dataset converters: one module per source dataset, the OVSISBench archive importer, and the
synthetic demo data. Which converter serves which dataset is read from the dataset registry
(``ovrsisbench.data.registry``); ``get_converter`` looks one up."""

from __future__ import annotations

from typing import Any

from ovrsisbench.choices import SOURCE_KINDS
from ovrsisbench.data.converters.base import Converter
from ovrsisbench.data.registry import REGISTRY
from ovrsisbench.errors import UserError, did_you_mean


def converter_classes(kind: str) -> dict[str, type[Converter]]:
    """Converter class of every dataset for ``kind`` (raw download or OVSISBench archive), in
    the registry's order."""
    if kind == "archive":
        from ovrsisbench.data.converters.ovsisbench import ARCHIVE_IMPORTERS

        return dict(ARCHIVE_IMPORTERS)
    if kind != "raw":
        raise UserError(f"unknown --source '{kind}' (use {' or '.join(SOURCE_KINDS)})")
    return {name: spec.converter_class() for name, spec in REGISTRY.items()}


def get_converter(dataset: str, kind: str = "raw", options: dict[str, Any] | None = None):
    """The converter of ``dataset`` from a ``kind`` source, with converter ``options``."""
    classes = converter_classes(kind)
    if dataset not in classes:
        raise UserError(
            f"unknown dataset '{dataset}'{did_you_mean(dataset, list(classes))} "
            f"(known: {', '.join(classes)})"
        )
    return classes[dataset](options)
