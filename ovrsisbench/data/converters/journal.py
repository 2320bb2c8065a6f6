"""The journal of finished pairs that makes ``prepare`` resumable."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ovrsisbench.data.converters.pairs import PairResult


class Journal:
    """Finished pairs, one JSON line each, after a header line holding the settings' hash.

    Lines are appended after a pair's files are in place; a line cut short by a kill is
    ignored, so the pair is simply converted again.
    """

    def __init__(self, path: Path, settings: str) -> None:
        self.path = path
        self.settings = settings

    def load(self) -> dict[str, PairResult]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        if not lines or _parse(lines[0]) != {"settings": self.settings}:
            return {}
        results = {}
        for line in lines[1:]:
            data = _parse(line)
            if isinstance(data, dict):
                result = PairResult.from_json(data)
                results[result.stem] = result
        return results

    def start(self, kept: Iterable[PairResult]) -> None:
        """Rewrite the journal with the header and the results kept from the last run."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"settings": self.settings})]
        lines += [json.dumps(asdict(result)) for result in kept]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)

    @contextmanager
    def appender(self) -> Iterator[Callable[[PairResult], None]]:
        with open(self.path, "a", encoding="utf-8") as handle:

            def append(result: PairResult) -> None:
                handle.write(json.dumps(asdict(result)) + "\n")
                handle.flush()

            yield append


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def outputs_exist(out: Path, result: PairResult) -> bool:
    return all(
        (out / "images" / o.image).is_file() and (out / "labels" / f"{o.stem}.png").is_file()
        for o in result.outputs
    )
