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
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ovrsisbench import __version__
from ovrsisbench.data.archives import extract_archive, file_digest, is_archive
from ovrsisbench.data.converters.base import Converter, SourceFile, SourcePair, SourceTree
from ovrsisbench.data.converters.tiling import Tiling
from ovrsisbench.data.layout import (
    IMAGE_SUFFIXES,
    META_FILE,
    DatasetMeta,
    DatasetWriter,
    check_label_values,
    image_size,
    open_pil_image,
    read_meta,
    read_rgb,
    tiff_band_count,
    write_label,
    write_png,
)
from ovrsisbench.data.native import IGNORE_INDEX
from ovrsisbench.errors import DataError, UserError
from ovrsisbench.io import atomic_copy, atomic_write_text

STATE_DIR = ".prepare"
JOURNAL = "journal.jsonl"
SOURCE_SHA256 = "source.sha256"
_MAX_NESTING = 3
_SHOWN_PROBLEMS = 5
_VERIFY_CHUNK = 64  # written samples re-read per task: one tile per task costs more in messaging


class Progress:
    """Progress sink (the CLI passes a rich one): one task per step of a dataset."""

    def start(self, description: str, total: int, done: int) -> None: ...

    def advance(self, count: int) -> None: ...


# --- converting one pair (runs in worker processes) ------------------------------------------


@dataclass
class Output:
    stem: str
    image: str  # file name in images/
    split: str | None
    height: int
    width: int
    pixels: dict[str, int]  # label value (as text: JSON keys) -> pixel count


@dataclass
class PairResult:
    stem: str
    inputs: list  # [[logical path, size, mtime_ns], ...] of the image and the label
    label: str  # logical path of the raw label
    outputs: list[Output] = field(default_factory=list)
    unmatched: int = 0
    unmatched_values: dict[str, int] = field(default_factory=dict)
    snapped: int = 0
    sha256: dict[str, str] = field(default_factory=dict)
    bad: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> PairResult:
        return cls(**{**data, "outputs": [Output(**o) for o in data["outputs"]]})


@dataclass(frozen=True)
class Job:
    dataset: str
    kind: str
    options: tuple  # sorted (name, value) items, hashable for the converter cache
    tiling: Tiling
    out: Path
    pair: SourcePair
    inputs: list
    hash_inputs: bool


@lru_cache(maxsize=8)
def _cached_converter(dataset: str, kind: str, options: tuple) -> Converter:
    from ovrsisbench.data.converters import get_converter

    return get_converter(dataset, kind, dict(options))


def _histogram(label: np.ndarray) -> dict[str, int]:
    counts = np.bincount(label.ravel(), minlength=256)
    return {str(value): int(counts[value]) for value in np.flatnonzero(counts)}


def _check_same_size(pair: SourcePair, image_hw: tuple, label_hw: tuple) -> None:
    if tuple(image_hw) != tuple(label_hw):
        raise DataError(
            f"{pair.image.real} ({image_hw[0]}x{image_hw[1]}) and its label {pair.label.real} "
            f"({label_hw[0]}x{label_hw[1]}) differ in size (height x width)"
        )


def _read_image(job: Job) -> np.ndarray:
    """The source image as (H, W, 3) uint8 in file band order; a TIFF must have exactly the
    bands the converter declares (e.g. Vaihingen's NIR, R, G), so no extra band goes unnoticed."""
    path = job.pair.image.real
    if path.suffix.lower() in (".tif", ".tiff"):
        bands = _cached_converter(job.dataset, job.kind, job.options).bands
        count = tiff_band_count(path)
        if count != len(bands):
            raise DataError(f"{path}: {count} bands, expected {len(bands)} ({', '.join(bands)})")
    return read_rgb(path)


def _write_whole(job: Job, label: np.ndarray) -> list[Output]:
    """Copy the image bytes (after decoding them fully, to catch truncation) and the label."""
    pair, out = job.pair, job.out
    image = _read_image(job)
    _check_same_size(pair, image.shape[:2], label.shape)
    name = f"{pair.stem}{Path(pair.image.name).suffix}"
    atomic_copy(pair.image.real, out / "images" / name, durable=False)
    write_label(out / "labels" / f"{pair.stem}.png", label, durable=False)
    return [Output(pair.stem, name, pair.split, *label.shape, _histogram(label))]


def _write_tiles(job: Job, label: np.ndarray) -> list[Output]:
    pair, out, tiling = job.pair, job.out, job.tiling
    image = _read_image(job)
    _check_same_size(pair, image.shape[:2], label.shape)
    outputs = []
    for y0, x0 in tiling.windows(*label.shape):
        stem = tiling.tile_stem(pair.stem, y0, x0)
        image_tile, label_tile = tiling.cut_pair(image, label, y0, x0)
        write_png(out / "images" / f"{stem}.png", image_tile, durable=False)
        write_label(out / "labels" / f"{stem}.png", label_tile, durable=False)
        histogram = _histogram(label_tile)
        outputs.append(Output(stem, f"{stem}.png", pair.split, *label_tile.shape, histogram))
    return outputs


def convert_pair(job: Job) -> PairResult:
    """Convert one source pair; unreadable or inconsistent inputs give a result with ``bad`` set."""
    pair = job.pair
    result = PairResult(pair.stem, job.inputs, pair.label.logical)
    converter = _cached_converter(job.dataset, job.kind, job.options)
    try:
        if job.hash_inputs:
            result.sha256 = {f.logical: file_digest(f.real) for f in (pair.image, pair.label)}
        decoded = converter.codec().decode(pair.label.real)
        check_label_values(decoded.label, len(converter.classes), pair.label.real)
        whole = job.tiling.tile is None and Path(pair.image.name).suffix.lower() in IMAGE_SUFFIXES
        result.outputs = (_write_whole if whole else _write_tiles)(job, decoded.label)
    except DataError as error:
        result.bad = str(error)
        return result
    result.unmatched = decoded.unmatched
    result.unmatched_values = decoded.unmatched_values
    result.snapped = decoded.snapped
    return result


def verify_outputs(args: tuple[Path, list[Output], int]) -> list[str]:
    """Re-read written samples; return the problems found (see ``verify_output``)."""
    out, outputs, num_classes = args
    return [p for p in (verify_output(out, o, num_classes) for o in outputs) if p is not None]


def verify_output(out: Path, output: Output, num_classes: int) -> str | None:
    """Re-read one written sample; return a problem, or None if image and label agree with the
    journal (same size, label values within the classes, same pixel counts)."""
    label_path = out / "labels" / f"{output.stem}.png"
    try:
        with open_pil_image(label_path, "label") as image:
            if image.mode != "L":
                return f"{label_path}: mode {image.mode}, expected L"
            label = np.array(image)
        check_label_values(label, num_classes, label_path)
        if image_size(out / "images" / output.image) != label.shape:
            return f"{out / 'images' / output.image}: size differs from its label {label_path}"
    except DataError as error:
        return str(error)
    if _histogram(label) != output.pixels:
        return f"{label_path}: pixel counts differ from what was written"
    return None


# --- running jobs ----------------------------------------------------------------------------


def _run_all(
    function: Callable[[Any], Any],
    items: list,
    pool: Executor | None,
    progress: Progress,
    size: Callable[[Any], int] = lambda item: 1,
) -> Iterator[Any]:
    """Yield ``function(item)`` for every item (completion order), advancing ``progress`` by
    ``size(item)``."""
    if pool is None:
        for item in items:
            yield function(item)
            progress.advance(size(item))
        return
    pending: set = set()
    queue = iter(items)
    limit = 4 * getattr(pool, "_max_workers", 1)
    sizes = {}
    while True:
        for item in queue:
            future = pool.submit(function, item)
            pending.add(future)
            sizes[future] = size(item)
            if len(pending) >= limit:
                break
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield future.result()
            progress.advance(sizes.pop(future))


def make_pool(workers: int, jobs: int) -> ProcessPoolExecutor | None:
    """min(workers, jobs) worker processes (forkserver on POSIX), or None for one."""
    workers = min(workers, jobs)
    if workers <= 1:
        return None
    method = "forkserver" if os.name == "posix" else "spawn"
    return ProcessPoolExecutor(workers, mp_context=get_context(method))


# --- the journal -----------------------------------------------------------------------------


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


def _outputs_exist(out: Path, result: PairResult) -> bool:
    return all(
        (out / "images" / o.image).is_file() and (out / "labels" / f"{o.stem}.png").is_file()
        for o in result.outputs
    )


# --- listing the download --------------------------------------------------------------------


def _walk(root: Path, skip: frozenset[Path] = frozenset()) -> Iterator[tuple[str, Path]]:
    """(posix path relative to ``root``, path) of the visible files under ``root``, sorted;
    the folders in ``skip`` (resolved) are left out."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and Path(folder, d).resolve() not in skip
        )
        for name in sorted(files):
            path = Path(folder, name)
            if name.startswith(".") or not path.is_file():
                continue
            yield path.relative_to(root).as_posix(), path


def _stat_listing(src: Path, skip: frozenset[Path]) -> list:
    """(relative path, size, mtime_ns) of every file of the download (``src`` itself if a file)."""
    files = [(src.name, src)] if src.is_file() else _walk(src, skip)
    return [[relative, (stat := path.stat()).st_size, stat.st_mtime_ns] for relative, path in files]


class _Lister:
    """Collects the files of a download, extracting the archives the converter wants."""

    def __init__(self, converter: Converter, scratch: Path, progress: Progress) -> None:
        self.converter = converter
        self.scratch = scratch
        self.progress = progress
        self.files: list[SourceFile] = []
        self.archives: list[SourceFile] = []

    def wants(self, logical: str) -> bool:
        return is_archive(Path(logical)) and self.converter.wants_archive(logical)

    def add(self, logical: str, real: Path, depth: int = 0) -> None:
        if depth > _MAX_NESTING or not self.wants(logical):
            self.files.append(SourceFile(logical, real))
            return
        self.archives.append(SourceFile(logical, real))
        dest = self.scratch / str(len(self.archives))
        self.progress.start(f"extracting {logical}", 1, 0)
        extract_archive(real, dest)
        self.progress.advance(1)
        for relative, path in _walk(dest):
            self.add(f"{logical}/{relative}", path, depth + 1)


@contextmanager
def _source_tree(
    src: Path, converter: Converter, scratch: Path, progress: Progress, skip: frozenset[Path]
) -> Iterator[tuple[SourceTree, list[SourceFile]]]:
    """The download as a SourceTree; extracted archives are removed on the way out."""
    lister = _Lister(converter, scratch, progress)
    if scratch.exists():  # left by a killed run
        shutil.rmtree(scratch)
    try:
        if src.is_file():
            if not is_archive(src):
                raise UserError(f"--src {src} is a file but not a zip or tar archive")
            lister.add(src.name, src)
        else:
            for relative, path in _walk(src, skip):
                lister.add(relative, path)
        yield SourceTree(lister.files), lister.archives
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def _checksums(converter: Converter, archives: list[SourceFile]) -> list[dict]:
    entries = []
    for archive in archives:
        expected = converter.checksums.get(archive.name)
        if expected:
            observed = file_digest(archive.real, "md5")
            entries.append(
                {
                    "file": archive.logical,
                    "md5": observed,
                    "expected": expected,
                    "match": observed == expected,
                }
            )
    return entries


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
    if not (out / META_FILE).is_file():
        return None
    try:
        meta = read_meta(out)
    except DataError:
        return None
    return meta if meta.extra.get("prepare", {}).get("fingerprint") == fingerprint else None


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

    ``origin`` is what meta.json names as the source when ``src`` is a folder extracted from it.
    """
    progress = progress or Progress()
    src, data_root = Path(src), Path(data_root)
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    dataset = converter.dataset
    tiling = tiling or converter.default_tiling
    out = data_root / dataset
    settings = {
        "dataset": dataset,
        "kind": converter.kind,
        "converter_version": converter.version,
        "options": converter.options,
        "tiling": tiling.to_json(),
    }
    # outputs are never read as inputs, even when the data root lies inside --src or is it
    output_folders = frozenset({data_root.resolve(), out.resolve()}) - {src.resolve()}
    fingerprint = _digest([settings, _stat_listing(src, output_folders)])
    meta = _up_to_date(out, fingerprint)
    if meta is not None:
        return PrepareReport(dataset, meta, up_to_date=True)

    scratch = data_root / f".{dataset}.extract"
    with _source_tree(src, converter, scratch, progress, output_folders) as (tree, archives):
        pairs, orphans = converter.find_pairs(tree)
        if not pairs:
            raise converter.nothing_found(src)
        _check_stems(pairs)
        writer = DatasetWriter(
            out,
            dataset,
            list(converter.classes),
            source={
                "kind": converter.kind,
                "src": str((origin or src).resolve()),
                "pairs": len(pairs),
                "archives": [archive.logical for archive in archives],
                "provenance": converter.provenance,
            },
            converter_version=converter.version,
            tiling=tiling.to_json(),
        )
        journal = Journal(out / STATE_DIR / JOURNAL, _digest(settings))
        with _pool(workers, len(pairs)) as pool:
            results, bad, resumed = _convert_all(
                converter, pairs, out, tiling, journal, pool, progress
            )
            if bad and not skip_bad:
                raise DataError(
                    f"{len(bad)} bad input(s): {_problems_line([b['problem'] for b in bad])} "
                    "(fix or remove them, or rerun with --skip-bad; finished pairs are kept)"
                )
            outputs = [output for result in results for output in result.outputs]
            if not outputs:
                raise DataError(
                    f"{src}: {len(results)} image(s) converted into no output: with edge "
                    f"'{tiling.edge}' every image is smaller than the {tiling.tile} px tile "
                    "(use a smaller --tile, --edge pad, or --tile 0)"
                )
            _verify_all(out, outputs, len(converter.classes), pool, progress)
        checksums = _checksums(converter, archives)

    for output in outputs:
        writer.adopt(output.stem, output.image, output.split)
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
    return PrepareReport(
        dataset, meta, converted=len(results) - resumed, resumed=resumed, bad=bad, warnings=warnings
    )


@contextmanager
def _pool(workers: int, jobs: int) -> Iterator[Executor | None]:
    pool = make_pool(workers, jobs)
    if pool is None:
        yield None
        return
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _bad_entry(pair: SourcePair, problem: str) -> dict:
    label_only = str(pair.label.real) in problem and str(pair.image.real) not in problem
    return {"path": (pair.label if label_only else pair.image).logical, "problem": problem}


def _convert_all(
    converter: Converter,
    pairs: list[SourcePair],
    out: Path,
    tiling: Tiling,
    journal: Journal,
    pool: Executor | None,
    progress: Progress,
) -> tuple[list[PairResult], list[dict], int]:
    """Convert every pair not finished before; return results in pair order, bad inputs, and
    how many results were resumed from the journal."""
    previous = journal.load()
    identities = {p.stem: [_file_identity(p.image), _file_identity(p.label)] for p in pairs}
    done = {
        stem: result
        for stem, result in previous.items()
        if identities.get(stem) == result.inputs and _outputs_exist(out, result)
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
    by_stem = {pair.stem: pair for pair in pairs}
    bad = []
    progress.start(f"{converter.dataset}: converting", len(pairs), len(pairs) - len(jobs))
    with journal.appender() as append:
        for result in _run_all(convert_pair, jobs, pool, progress):
            if result.bad is not None:
                bad.append(_bad_entry(by_stem[result.stem], result.bad))
                continue
            append(result)
            done[result.stem] = result
    results = [done[pair.stem] for pair in pairs if pair.stem in done]
    return results, sorted(bad, key=lambda b: b["path"]), len(pairs) - len(jobs)


def _verify_all(
    out: Path, outputs: list[Output], num_classes: int, pool: Executor | None, progress: Progress
) -> None:
    """Re-read every written file; DataError listing what does not agree with the journal."""
    progress.start(f"{out.name}: verifying", len(outputs), 0)
    chunks = [outputs[i : i + _VERIFY_CHUNK] for i in range(0, len(outputs), _VERIFY_CHUNK)]
    items = [(out, chunk, num_classes) for chunk in chunks]
    found = _run_all(verify_outputs, items, pool, progress, size=lambda item: len(item[1]))
    problems = sorted(problem for chunk in found for problem in chunk)
    if problems:
        raise DataError(f"verification of {out} failed: {_problems_line(problems)}")


def _write_source_sha256(out: Path, results: list[PairResult]) -> None:
    lines = sorted(
        f"{digest}  {logical}\n" for result in results for logical, digest in result.sha256.items()
    )
    atomic_write_text(out / SOURCE_SHA256, "".join(lines))
