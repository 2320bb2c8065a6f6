"""The adapter registry: finds adapter classes by name.

An adapter is found, in this order, among the built-ins (``ovrsisbench.adapters.BUILTINS``, a
name -> ``module:Class`` table imported one model at a time, so that finding one model imports no
other), in the entry-point group ``ovrsisbench.adapters``, or as a ``package.module:ClassName``
string.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovrsisbench.adapter import Adapter
from ovrsisbench.errors import UserError, did_you_mean

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "ovrsisbench.adapters"


@dataclass(frozen=True)
class AdapterEntry:
    """Where an adapter class was found."""

    name: str
    origin: str  # "built-in", "entry point (<dist>)" or "module:Class"
    cls: type[Adapter]
    dist: metadata.Distribution | None = None  # the distribution of an entry point

    def provenance(self) -> dict[str, str | None]:
        """Name, origin, version, source URL and licence: the class's own values (set on the
        class itself: a subclass of another model is not that model), else its distribution's
        metadata (entry points), else ovrsisbench's version (built-ins)."""
        own, meta = vars(self.cls), self.dist.metadata if self.dist is not None else None
        version = own.get("version") or (self.dist.version if self.dist is not None else None)
        if version is None and self.origin == "built-in":
            from ovrsisbench import __version__

            version = __version__
        source_url = own.get("source_url") or (_distribution_url(meta) if meta else None)
        licence = own.get("licence") or (_distribution_licence(meta) if meta else None)
        return {
            "name": self.name,
            "origin": self.origin,
            "version": version,
            "source_url": source_url,
            "licence": licence,
        }


def _distribution_url(meta: Any) -> str | None:
    """Home page, else the first project URL, of a distribution's metadata."""
    if meta.get("Home-page"):
        return meta["Home-page"]
    for entry in meta.get_all("Project-URL") or []:
        return entry.split(",", 1)[-1].strip()
    return None


def _distribution_licence(meta: Any) -> str | None:
    return meta.get("License-Expression") or meta.get("License") or None


def _builtin(name: str) -> type[Adapter]:
    """The class of the built-in adapter ``name`` (its module imported now)."""
    from ovrsisbench.adapters import BUILTINS

    module_name, _, attr = BUILTINS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def builtin_names() -> list[str]:
    """The names of the built-in adapters, sorted (no model imported)."""
    from ovrsisbench.adapters import BUILTINS

    return sorted(BUILTINS)


def builtin_adapters() -> dict[str, type[Adapter]]:
    """Every built-in adapter class by name (imports every model)."""
    return {name: _builtin(name) for name in builtin_names()}


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _check_adapter_class(obj: Any, where: str) -> type[Adapter]:
    if not (isinstance(obj, type) and issubclass(obj, Adapter)):
        raise UserError(f"{where} is not a subclass of ovrsisbench.adapter.Adapter")
    return obj


def _import_spec(spec: str) -> type[Adapter]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"adapter '{spec}' must look like package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or any error raised by the module's own code
        raise UserError(
            f"cannot import adapter module '{module_name}': {type(error).__name__}: {error}"
        ) from error
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UserError(f"module '{module_name}' has no attribute '{attr}'") from None
    return _check_adapter_class(obj, f"'{spec}'")


def _load_entry_point(point: metadata.EntryPoint) -> AdapterEntry:
    dist = point.dist.name if point.dist else "unknown distribution"
    where = f"entry point '{point.name}' ({point.value})"
    try:
        loaded = point.load()
    except Exception as error:
        raise UserError(f"cannot load {where}: {type(error).__name__}: {error}") from error
    cls = _check_adapter_class(loaded, where)
    return AdapterEntry(point.name, f"entry point ({dist})", cls, point.dist)


def list_adapters() -> tuple[list[AdapterEntry], list[str]]:
    """Adapters found without a module:Class string (built-ins, then entry points), and a
    message for every entry point that could not be loaded (a broken plug-in hides no other)."""
    entries = [AdapterEntry(n, "built-in", cls) for n, cls in builtin_adapters().items()]
    problems = []
    seen = {entry.name for entry in entries}
    for point in sorted(_entry_points(), key=lambda p: p.name):
        if point.name in seen:
            continue
        try:
            entries.append(_load_entry_point(point))
        except UserError as error:
            problems.append(str(error))
        seen.add(point.name)
    return entries, problems


def find_adapter(name: str) -> AdapterEntry:
    """Resolve ``name`` (built-in, entry point, or module:Class) to its adapter class."""
    if ":" in name:
        cls = _import_spec(name)
        return AdapterEntry(cls.name or name, name, cls)
    if name in builtin_names():
        return AdapterEntry(name, "built-in", _builtin(name))
    for point in _entry_points():
        if point.name == name:
            return _load_entry_point(point)
    known = [entry.name for entry in list_adapters()[0]]
    raise UserError(
        f"unknown model '{name}'{did_you_mean(name, known)} (known: {', '.join(known)}; or give "
        "package.module:ClassName)"
    )


def create_adapter(name: str, **options: Any) -> Adapter:
    """Instantiate the adapter named ``name`` with ``options``."""
    entry = find_adapter(name)
    try:
        adapter = entry.cls(**options)
    except UserError:
        raise
    except Exception as error:  # a third-party constructor's own failure
        raise UserError(
            f"adapter '{name}' could not be created: {type(error).__name__}: {error}"
        ) from error
    if not adapter.name:
        adapter.name = entry.name
    return adapter


def load_adapter(adapter: Adapter, weights: Path | None, device: torch.device | str) -> Adapter:
    """Load ``adapter`` from ``weights`` (None: its default weights) onto ``device``, keeping
    the file as ``adapter.weights_file``; a missing file or a failing load is a UserError that
    names the adapter and the file."""
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"weights file {weights} does not exist")
    try:
        adapter.load(weights, device)
    except UserError:
        raise
    except Exception as error:  # corrupt weights, a plug-in's bug: the cause, in one line
        source = f" from {weights}" if weights else ""
        raise UserError(
            f"adapter '{adapter.name}' failed to load{source}: {type(error).__name__}: {error}"
        ) from error
    adapter.weights_file = None if weights is None else Path(weights)
    return adapter
