"""``prepare``: one engine for every converter.

Steps: list the download (extracting wanted archives safely into a hidden folder beside the
output), let the converter find its (image, label) pairs, convert the pairs (in worker
processes: decode the label, cut or copy the image, write atomically, check the label round
trip), journal each finished pair, then verify every written file and write ``meta.json``.

Resuming: until a run finishes, ``<dataset>/.prepare/journal.jsonl`` lists the finished pairs;
a pair whose inputs (path, size, mtime) and settings are unchanged and whose outputs exist is not
converted again, so an interrupted run continues where it stopped. A second run on an unchanged
download with the same settings finds ``meta.json`` up to date and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovrsisbench import __version__
from ovrsisbench.data.converters.base import Converter, SourceFile, SourcePair
from ovrsisbench.data.converters.journal import Journal, outputs_exist
from ovrsisbench.data.converters.pairs import (
    Job,
    Output,
    PairResult,
    convert_pair,
    verify_outputs,
)
from ovrsisbench.data.converters.sources import archive_checksums, source_tree, stat_listing
from ovrsisbench.data.converters.workers import Pool, Progress, pool_for, run_all
from ovrsisbench.data.layout import (
    ALL_SPLIT,
    META_FILE,
    DatasetMeta,
    DatasetWriter,
    PreparedDataset,
)
from ovrsisbench.data.native import IGNORE_INDEX
from ovrsisbench.data.tiling import Tiling
from ovrsisbench.errors import DataError, UserError
from ovrsisbench.io import atomic_write_text

STATE_DIR = ".prepare"
JOURNAL = "journal.jsonl"
SOURCE_SHA256 = "source.sha256"
_SHOWN_PROBLEMS = 5
_VERIFY_CHUNK = 64  # written samples re-read per task: one tile per task costs more in messaging


# --- the whole dataset -----------------------------------------------------------------------


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` did; ``meta`` is the dataset's meta (new or up to date)."""

    dataset: str
    meta: DatasetMeta
    up_to_date: bool = False
    converted: int = 0
    resumed: int = 0
    bad: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _up_to_date(out: Path, fingerprint: str) -> DatasetMeta | None:
    """The meta of a finished run with the same fingerprint whose files are all still there."""
    if not (out / META_FILE).is_file():
        return None
    try:
        dataset = PreparedDataset(out)
        if dataset.meta.extra.get("prepare", {}).get("fingerprint") != fingerprint:
            return None
        complete = len(dataset.stems(ALL_SPLIT)) == dataset.meta.splits[ALL_SPLIT]
    except UserError:
        return None
    return dataset.meta if complete else None


def _written_paths(data_root: Path, out: Path) -> frozenset[Path]:
    """What prepare writes under the data root (resolved): the outputs of ``out`` and of every
    prepared dataset beside it. Skipping these (not whole folders) lets --src be the data root or
    the dataset's own folder, with the download lying beside the outputs."""
    root = data_root.resolve()
    folders = {out.resolve()}
    if root.is_dir():
        folders |= {d for d in root.iterdir() if d.is_dir() and (d / META_FILE).is_file()}
    return frozenset(
        folder / name
        for folder in folders
        for name in ("images", "labels", "splits", META_FILE, SOURCE_SHA256)
    )


def _file_identity(file: SourceFile) -> list:
    stat = file.real.stat()
    return [file.logical, stat.st_size, stat.st_mtime_ns]


def _check_stems(pairs: list[SourcePair]) -> None:
    seen: dict[str, SourcePair] = {}
    for pair in pairs:
        other = seen.setdefault(pair.stem, pair)
        if other is not pair:
            raise DataError(
                f"{pair.label.logical}: output name '{pair.stem}' also used by "
                f"{other.label.logical}"
            )


def _problems_line(problems: list[str]) -> str:
    more = len(problems) - _SHOWN_PROBLEMS
    return "; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


def _summary(
    results: list[PairResult], verified: list[Output], classes: tuple[str, ...], bad: list[dict]
) -> dict:
    pixels: Counter = Counter()
    for output in verified:
        pixels.update({int(k): v for k, v in output.pixels.items()})
    values: Counter = Counter()
    for result in results:
        values.update(result.unmatched_values)
    return {
        "pixels": {
            **{name: pixels.get(i, 0) for i, name in enumerate(classes)},
            "unlabelled": pixels.get(IGNORE_INDEX, 0),
        },
        "unmatched_pixels": sum(r.unmatched for r in results),
        "unmatched_by_file": {r.label: r.unmatched for r in results if r.unmatched},
        "unmatched_values": dict(values.most_common(10)),
        "snapped_pixels": sum(r.snapped for r in results),
        "bad_inputs": bad,
    }


def _settings(converter: Converter, tiling: Tiling) -> dict:
    return {
        "dataset": converter.dataset,
        "kind": converter.kind,
        "converter_version": converter.version,
        "options": converter.options,
        "tiling": tiling.to_json(),
    }


def up_to_date(
    converter: Converter, download: Path, data_root: Path, tiling: Tiling | None = None
) -> DatasetMeta | None:
    """The meta of ``<data_root>/<dataset>`` if it was prepared from ``download`` as it is now,
    with the same settings, and is complete; else None."""
    tiling = tiling or converter.default_tiling
    return _up_to_date(
        data_root / converter.dataset, _fingerprint(converter, tiling, download, data_root)
    )


def _fingerprint(converter: Converter, tiling: Tiling, download: Path, data_root: Path) -> str:
    written = _written_paths(data_root, data_root / converter.dataset)
    return _digest([_settings(converter, tiling), stat_listing(download, written)])


def prepare_dataset(
    converter: Converter,
    src: Path,
    data_root: Path,
    *,
    tiling: Tiling | None = None,
    workers: int = 1,
    skip_bad: bool = False,
    progress: Progress | None = None,
    origin: Path | None = None,
) -> PrepareReport:
    """Convert the download at ``src`` into ``<data_root>/<dataset>``; see the module docstring.

    ``origin`` is the download as the user gave it when ``src`` is a folder extracted from it:
    meta.json names it, and the up-to-date check looks at it.
    """
    progress = progress or Progress()
    src, data_root = Path(src), Path(data_root)
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    dataset = converter.dataset
    tiling = tiling or converter.default_tiling
    out = data_root / dataset
    settings = _settings(converter, tiling)
    download = origin or src  # what the user gave, for meta.json and messages
    written = _written_paths(data_root, out)  # never read as inputs, even inside --src
    fingerprint = _fingerprint(converter, tiling, download, data_root)
    meta = _up_to_date(out, fingerprint)
    if meta is not None:
        return PrepareReport(dataset, meta, up_to_date=True)

    scratch = data_root / f".{dataset}.extract"
    with source_tree(src, converter, scratch, progress, written) as (tree, archives):
        pairs, orphans = converter.find_pairs(tree)
        if not pairs:
            raise converter.nothing_found(download)
        _check_stems(pairs)
        writer = DatasetWriter(
            out,
            dataset,
            list(converter.classes),
            source={
                "kind": converter.kind,
                "src": str(download.resolve()),
                "pairs": len(pairs),
                "archives": [archive.logical for archive in archives],
                "provenance": converter.provenance,
                "licence": converter.spec.licence,
            },
            converter_version=converter.version,
            tiling=tiling.to_json(),
        )
        journal = Journal(out / STATE_DIR / JOURNAL, _digest(settings))
        with pool_for(workers, len(pairs)) as pool:
            results, bad, resumed = _convert_all(
                converter, pairs, out, tiling, journal, pool, progress
            )
            if bad and not skip_bad:
                raise DataError(
                    f"{len(bad)} bad input(s) in {download}: "
                    f"{_problems_line([b['problem'] for b in bad])} (fix or remove them, or "
                    "rerun with --skip-bad; finished pairs are kept)"
                )
            outputs = [output for result in results for output in result.outputs]
            if not results:
                raise DataError(f"{download}: every input is bad ({len(bad)}), nothing to prepare")
            if not outputs:
                raise DataError(
                    f"{download}: {len(results)} image(s) converted into no output: with edge "
                    f"'{tiling.edge}' every image is smaller than the {tiling.tile} px tile "
                    "(use a smaller --tile, --edge pad, or --tile 0)"
                )
            _verify_all(out, outputs, len(converter.classes), pool, progress)
        checksums = archive_checksums(converter, archives)

    for output in outputs:
        writer.adopt(output.stem, output.image, output.split)
    (out / SOURCE_SHA256).unlink(missing_ok=True)  # from an earlier import
    if converter.kind == "archive":
        _write_source_sha256(out, results)
    extra = {
        "verification": _summary(results, outputs, converter.classes, bad),
        "orphans": [orphan.logical for orphan in orphans],
        "notes": list(converter.notes),
        **({"checksums": checksums} if converter.checksums else {}),
        **converter.meta_extra(),
        "prepare": {"fingerprint": fingerprint, "settings": settings, "ovrsisbench": __version__},
    }
    meta = writer.finalize(extra)
    shutil.rmtree(out / STATE_DIR)  # finished: meta.json's fingerprint now says it is up to date
    warnings = [
        f"{c['file']}: md5 {c['md5']} differs from the published {c['expected']} "
        "(recorded in meta.json)"
        for c in checksums
        if not c["match"]
    ]
    if orphans:
        warnings.append(f"{len(orphans)} label(s) without an image skipped (listed in meta.json)")
    warnings += converter.warnings()
    return PrepareReport(
        dataset, meta, converted=len(results) - resumed, resumed=resumed, bad=bad, warnings=warnings
    )


def _convert_all(
    converter: Converter,
    pairs: list[SourcePair],
    out: Path,
    tiling: Tiling,
    journal: Journal,
    pool: Pool | None,
    progress: Progress,
) -> tuple[list[PairResult], list[dict], int]:
    """Convert every pair not finished before; return results in pair order, bad inputs, and
    how many results were resumed from the journal."""
    previous = journal.load()
    identities = {p.stem: [_file_identity(p.image), _file_identity(p.label)] for p in pairs}
    done = {
        stem: result
        for stem, result in previous.items()
        if identities.get(stem) == result.inputs and outputs_exist(out, result)
    }
    journal.start(done.values())
    options = tuple(sorted(converter.options.items()))
    jobs = [
        Job(
            converter.dataset,
            converter.kind,
            options,
            tiling,
            out,
            pair,
            identities[pair.stem],
            hash_inputs=converter.kind == "archive",
        )
        for pair in pairs
        if pair.stem not in done
    ]
    bad = []
    progress.start(f"{converter.dataset}: converting", len(pairs), len(pairs) - len(jobs))
    with journal.appender() as append:
        for result in run_all(convert_pair, jobs, pool, progress):
            if result.bad is not None:
                bad.append(result.bad)
                continue
            append(result)
            done[result.stem] = result
    results = [done[pair.stem] for pair in pairs if pair.stem in done]
    return results, sorted(bad, key=lambda b: b["path"]), len(pairs) - len(jobs)


def _verify_all(
    out: Path, outputs: list[Output], num_classes: int, pool: Pool | None, progress: Progress
) -> None:
    """Re-read every written file; DataError listing what does not agree with the journal."""
    progress.start(f"{out.name}: verifying", len(outputs), 0)
    chunks = [outputs[i : i + _VERIFY_CHUNK] for i in range(0, len(outputs), _VERIFY_CHUNK)]
    items = [(out, chunk, num_classes) for chunk in chunks]
    found = run_all(verify_outputs, items, pool, progress, size=lambda item: len(item[1]))
    problems = sorted(problem for chunk in found for problem in chunk)
    if problems:
        raise DataError(f"verification of {out} failed: {_problems_line(problems)}")


def _write_source_sha256(out: Path, results: list[PairResult]) -> None:
    lines = sorted(
        f"{digest}  {logical}\n" for result in results for logical, digest in result.sha256.items()
    )
    atomic_write_text(out / SOURCE_SHA256, "".join(lines))
