"""Adapter discovery: built-ins, entry points, module:Class strings, and their errors."""

from __future__ import annotations

from importlib import metadata

import pytest

from ovrsisbench import registry
from ovrsisbench.errors import UserError


def fake_entry_points(*specs: tuple[str, str]):
    return lambda: [
        metadata.EntryPoint(name, value, registry.ENTRY_POINT_GROUP) for name, value in specs
    ]


def test_builtin_is_found():
    entry = registry.find_adapter("maskclip")
    assert entry.origin == "built-in" and entry.cls.name == "maskclip"


def test_entry_point_adapter_is_found_and_listed(monkeypatch, toy_adapters):
    monkeypatch.setattr(
        registry, "_entry_points", fake_entry_points(("colour", "toy_adapters:ColourAdapter"))
    )
    entry = registry.find_adapter("colour")
    assert entry.origin.startswith("entry point") and entry.cls.__name__ == "ColourAdapter"
    listed = {e.name: e.origin for e in registry.list_adapters()[0]}
    assert listed["maskclip"] == "built-in" and listed["colour"].startswith("entry point")


def test_entry_point_that_is_not_an_adapter_is_reported(monkeypatch, toy_adapters):
    monkeypatch.setattr(registry, "_entry_points", fake_entry_points(("bad", "toy_adapters:time")))
    with pytest.raises(UserError, match="not a subclass of ovrsisbench.adapter.Adapter"):
        registry.find_adapter("bad")


def test_a_broken_plugin_hides_no_other_adapter(monkeypatch, toy_adapters):
    monkeypatch.setattr(
        registry,
        "_entry_points",
        fake_entry_points(("broken", "no_such_module:X"), ("colour", "toy_adapters:ColourAdapter")),
    )
    entries, problems = registry.list_adapters()
    assert {e.name for e in entries} == {*registry.builtin_names(), "colour"}
    assert len(problems) == 1 and "cannot load entry point 'broken'" in problems[0]
    with pytest.raises(UserError, match="cannot load entry point 'broken'"):
        registry.find_adapter("broken")


def test_options_are_stored_as_they_read_back_from_json(toy_adapters):
    adapter = registry.create_adapter("toy_adapters:ColourAdapter", gain=(1, 2))
    assert adapter.options == {"gain": [1, 2]}
    with pytest.raises(UserError, match="must be JSON values"):
        registry.create_adapter("toy_adapters:ColourAdapter", gain=object())
    with pytest.raises(UserError, match="must be JSON values"):
        registry.create_adapter("toy_adapters:ColourAdapter", gain=float("nan"))


def test_module_class_strings(toy_adapters):
    adapter = registry.create_adapter("toy_adapters:ColourAdapter", gain=2.0)
    assert adapter.options == {"gain": 2.0}
    with pytest.raises(UserError, match="has no attribute 'Nope'"):
        registry.find_adapter("toy_adapters:Nope")
    with pytest.raises(UserError, match="must look like package.module:ClassName"):
        registry.find_adapter("toy_adapters:")
    with pytest.raises(UserError, match="has no option colour"):
        registry.create_adapter("toy_adapters:ColourAdapter", colour="red")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown model 'nope' \(known: .*maskclip"):
        registry.find_adapter("nope")
