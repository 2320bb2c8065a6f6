"""Evaluation engine: one adapter x the protocol's datasets -> one result record per dataset.

Images are visited in a fixed order; consecutive images of the same size are batched
(``batch_plan``). One path serves one process and several: each process evaluates its shard of
a split's batches (``Context.shard``: no padding, no duplicates; one process's shard is every
batch), the int64 confusion matrices, image counts and prediction seconds are summed over the
processes, and rank 0 alone builds the record (``results.make_record``) and writes it: a
distributed run's record equals a single-process run's.

With one process the confusion matrix of a dataset in progress is checkpointed, so an
interrupted run resumes where it stopped and ends with exactly the counts of an uninterrupted
one. Checkpoints are off with several processes: an interrupted distributed run restarts the
dataset it was working on.

``EvalSettings.save_predictions`` keeps the predicted maps of the first images of each split
(``ovrsisbench.predictions``): each process writes the maps of its own images into the results
folder (one folder that all processes share, as on one machine), rank 0 lists them in the record.
A record that exists without the maps asked for is evaluated again; the maps are added to it
when the new counts equal its own, exactly (else the dataset fails and says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import torch
from torch.utils.data import Subset

import ovrsisbench
from ovrsisbench import predictions
from ovrsisbench.adapter import Adapter
from ovrsisbench.checkpoints import weights_origin
from ovrsisbench.data.layout import PreparedDataset, open_dataset
from ovrsisbench.data.loader import SegmentationDataset, read_ahead
from ovrsisbench.distributed import Context
from ovrsisbench.environment import device_name
from ovrsisbench.errors import DataError
from ovrsisbench.io import file_sha256, json_sha256
from ovrsisbench.metrics import DEFAULT_POLICY, ConfusionMatrix
from ovrsisbench.palette import class_colours
from ovrsisbench.params import count_parameters
from ovrsisbench.protocol import EvalEntry, Protocol, Vocabulary
from ovrsisbench.results import Measurement, RecordKey, ResultStore, make_record
from ovrsisbench.threads import model_threads, torch_threads


class ProgressSink(TypingProtocol):
    """Receives progress: ``start`` once per dataset, then ``advance`` per image."""

    def start(self, dataset: str, total: int, done: int) -> None: ...
    def advance(self, count: int) -> None: ...


@dataclass
class Outcome:
    """What happened to one evaluation entry."""

    dataset: str
    status: str  # "done", "skipped" (record exists), "failed"
    record: dict[str, Any] | None = None  # None on ranks other than 0 of a distributed run
    path: Path | None = None
    error: str | None = None


@dataclass
class Shard:
    """What one process measured over its shard of a split, and the maps the record lists."""

    confusion: ConfusionMatrix
    done: int
    seconds: float
    provenance: dict[str, Any]  # the prepared dataset's version, meta.json hash, converter
    map_stems: list[str]  # the first images of the split, whose maps all processes saved
    written: dict[str, str]  # stem -> SHA-256 of the maps this process saved in this run


@dataclass
class EvalSettings:
    """How to run: device, batching, reader threads, checkpoint cadence, maps to keep."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 4
    reader_threads: int = 2
    checkpoint_seconds: float = 30.0
    policy: str = DEFAULT_POLICY
    save_predictions: predictions.Request = None  # images per split (or "all") whose maps to keep


class Evaluator:
    """Runs one loaded adapter over protocol entries, writing records into ``store``.

    ``context`` (default: one process on ``settings.device``) makes it one of several processes
    under torchrun: then every process must call ``run`` with the same entries. The record key
    holds ``adapter.weights_sha256()``, the adapter's hash of every file its weights come from;
    ``weights`` (the file given to ``load``, if any) only names where they come from.
    """

    def __init__(
        self,
        adapter: Adapter,
        model_name: str,
        protocol: Protocol,
        data_root: Path,
        store: ResultStore,
        settings: EvalSettings,
        weights: Path | None = None,
        context: Context | None = None,
    ) -> None:
        self.adapter = adapter
        self.model_name = model_name
        self.protocol = protocol
        self.data_root = Path(data_root)
        self.store = store
        self.settings = settings
        self.weights_sha256 = adapter.weights_sha256()
        self.weights_origin = (
            weights_origin(weights, self.weights_sha256)
            if weights and self.weights_sha256
            else None
        )
        self.context = context or Context(device=settings.device)

    def key(self, entry: EvalEntry) -> RecordKey:
        """The record key of ``entry`` (reads the prepared dataset's meta.json)."""
        vocabulary = entry.vocabulary
        meta = open_dataset(self.data_root, entry.dataset).meta
        return RecordKey(
            model=self.model_name,
            options=self.adapter.evaluation_options(),
            weights_sha256=self.weights_sha256,
            protocol=self.protocol.name,
            dataset=entry.dataset,
            split=entry.split,
            vocabulary={"name": vocabulary.name, "sha256": vocabulary.sha256},
            code_version=ovrsisbench.__version__,
            data_version=meta.version(),
        )

    def use_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Give the adapter the vocabulary's classes and its rejection rule (or none)."""
        self.adapter.set_vocabulary(vocabulary.prompts())
        self.adapter.set_background(vocabulary.background)

    def run(self, entries: list[EvalEntry], progress: ProgressSink | None = None) -> list[Outcome]:
        """Evaluate every entry; a failing dataset is reported and the others still run.
        A small model runs on one CPU thread (``ovrsisbench.threads``).

        One path for one process and several: each step ends in a collective that every
        process reaches, also when its own part failed, so no process waits forever and all
        return the same statuses (with one process the collectives return at once); only
        rank 0 reads existing records and writes files."""
        with model_threads(self.adapter.network, self.settings.device):
            return [self._run_entry(entry, progress) for entry in entries]

    def _agree(self, error: str | None) -> str | None:
        """Collective: None when no process failed, else the same message on every process."""
        errors = self.context.all_gather_object(error)
        failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
        if not failed:
            return None
        if len(failed) == len(errors) and len({message for _, message in failed}) == 1:
            return failed[0][1]  # the same failure everywhere (a missing dataset, say)
        return "; ".join(f"process {rank}: {message}" for rank, message in failed)

    def _run_entry(self, entry: EvalEntry, progress: ProgressSink | None) -> Outcome:
        ctx = self.context
        error: str | None = None
        key: RecordKey | None = None
        existing: dict[str, Any] | None = None
        lacks_maps = False  # the record exists without the maps this run is asked to save
        try:
            key = self.key(entry)
            if ctx.is_main:
                existing = self.store.find(key)
                lacks_maps = existing is not None and not self._has_maps(entry, key, existing)
        except Exception as caught:  # one broken dataset must not stop the others
            error = _describe(caught)
        failure = self._agree(error)
        # rank 0 alone decides whether the record exists; every process follows it
        found, recount = (
            bool(flag)
            for flag in ctx.all_reduce_sum(
                torch.tensor([int(existing is not None), int(lacks_maps)], dtype=torch.int64)
            ).tolist()
        )
        if failure is not None:
            return Outcome(entry.dataset, "failed", error=failure)
        assert key is not None
        if found and not recount:
            if ctx.is_main:
                self.store.discard_partial(key)  # left over if a run died after saving
            return Outcome(entry.dataset, "skipped", existing, self.store.path_for(key))

        shard = None
        try:
            shard = self._evaluate_shard(entry, key, progress)
        except Exception as caught:  # reported by every process after the next collective
            error = _describe(caught)
        failure = self._agree(error)
        if failure is not None:
            return Outcome(entry.dataset, "failed", error=failure)
        assert shard is not None
        # the hashes of the maps each process wrote (one folder need not be shared by all)
        hashes = {s: h for part in ctx.all_gather_object(shard.written) for s, h in part.items()}
        confusion, done, seconds = shard.confusion, shard.done, shard.seconds
        counts = ctx.all_reduce_sum(torch.from_numpy(confusion.matrix))  # int64: exact
        num_images = int(ctx.all_reduce_sum(torch.tensor([done], dtype=torch.int64)).item())
        # device seconds of all processes: ms/image per device
        elapsed = float(ctx.all_reduce_sum(torch.tensor([seconds], dtype=torch.float64)).item())
        if num_images == 0:
            message = f"ValueError: split '{entry.split}' of {entry.dataset} has no images"
            return Outcome(entry.dataset, "failed", error=message)

        def new_record() -> dict[str, Any]:
            device = device_name(self.settings.device)
            measurement = Measurement(counts.numpy(), num_images, elapsed, device)
            return self._record(entry, key, measurement, shard, hashes)

        def extended_record() -> dict[str, Any]:
            assert existing is not None  # on rank 0
            if counts.tolist() != existing["confusion"]:
                self.store.discard_partial(key)
                raise DataError(
                    f"{self.store.path_for(key)}: evaluated again to save its prediction maps, "
                    "the model counted other pixels than this record (its predictions depend on "
                    "the device or the batch size); no maps added. Rerun with the record's "
                    "settings, or delete the record to replace it"
                )
            return {**existing, "predictions": self._listing(key, shard.map_stems, hashes)}

        return self._save_on_main(entry, key, extended_record if recount else new_record)

    def _save_on_main(
        self, entry: EvalEntry, key: RecordKey, build: Callable[[], dict[str, Any]]
    ) -> Outcome:
        """Rank 0 builds the record and saves it; every process learns whether that worked."""
        error, record = None, None
        try:
            if self.context.is_main:
                record = build()
                self.store.save(record)
        except Exception as caught:
            error = _describe(caught)
        failure = self._agree(error)
        if failure is not None:
            return Outcome(entry.dataset, "failed", error=failure)
        return Outcome(entry.dataset, "done", record, self.store.path_for(key))

    def _has_maps(self, entry: EvalEntry, key: RecordKey, record: dict[str, Any]) -> bool:
        """Whether an existing record lists the maps this run is asked to save (unchanged)."""
        if self.settings.save_predictions is None:
            return True
        stems = open_dataset(self.data_root, entry.dataset).stems(entry.split)
        path = self.store.path_for(key)
        return predictions.covers(path, record, self.settings.save_predictions, stems)

    def _listing(
        self, key: RecordKey, map_stems: list[str], hashes: dict[str, str]
    ) -> dict[str, Any] | None:
        """The record's ``predictions`` entry: the maps of ``map_stems`` (``hashes``: of those
        written by this run's processes; the others, from before a resume, are read)."""
        request = self.settings.save_predictions
        return predictions.listing(self.store.path_for(key), map_stems, request, hashes)

    def _open(self, entry: EvalEntry) -> tuple[PreparedDataset, list[str], str]:
        """The prepared dataset of ``entry`` (checked), its split's stems, its meta.json's hash."""
        dataset = open_dataset(self.data_root, entry.dataset)
        meta_path = dataset.directory / "meta.json"
        entry.vocabulary.check_dataset(dataset.meta.classes, str(meta_path))
        stems = dataset.stems(entry.split)
        stated = dataset.meta.splits.get(entry.split)
        if stated is not None and stated != len(stems):
            raise DataError(
                f"{meta_path}: says split '{entry.split}' has {stated} images, found {len(stems)}"
            )
        return dataset, stems, file_sha256(meta_path)

    @property
    def _checkpoints(self) -> bool:
        """Whether progress is checkpointed: with one process only (see the module docstring)."""
        return self.context.world_size == 1

    def _evaluate_shard(
        self, entry: EvalEntry, key: RecordKey, progress: ProgressSink | None
    ) -> Shard:
        """This process's counts, images and prediction seconds over its shard of the split
        (one process: the whole split, resumed from its checkpoint), saving the maps asked for
        of its images; ``progress`` counts the shard."""
        dataset, stems, meta_sha = self._open(entry)
        vocabulary = entry.vocabulary
        num_classes = len(vocabulary.classes)
        confusion = ConfusionMatrix(num_classes)
        maps = predictions.wanted(self.settings.save_predictions, len(stems))
        record_path = self.store.path_for(key)
        # a checkpoint is valid only for the very same files list and meta.json, and only with
        # the maps asked for of the images it counted
        data_sha = json_sha256({"meta": meta_sha, "stems": stems})
        state = self.store.load_partial(key) if self._checkpoints else None
        if (
            state is not None
            and state.get("data_sha256") == data_sha
            and predictions.all_saved(record_path, stems[: min(state["num_images"], maps)])
        ):
            confusion.load(state["confusion"])
            done, seconds = state["num_images"], state["predict_seconds"]
        else:
            done, seconds = 0, 0.0
        # the batches of the images left, and this process's share of them: whole batches, so
        # every image is predicted with the same companions as in a single-process run
        sizes = [dataset.sample_size(stem) for stem in stems[done:]]
        plan = batch_plan(sizes, self.settings.batch_size, first=done)
        mine = [plan[i] for i in self.context.shard(len(plan))]
        indices = [index for batch in mine for index in batch]
        if progress is not None:
            progress.start(entry.dataset, done + len(indices), done)
        self.use_vocabulary(vocabulary)
        samples = SegmentationDataset(dataset, entry.split, vocabulary.lookup_table())
        loader = iter(read_ahead(Subset(samples, indices), threads=self.settings.reader_threads))
        colours = class_colours(vocabulary)
        written: dict[str, str] = {}  # stem -> SHA-256 of the maps this process saves
        last_checkpoint = time.monotonic()

        def checkpoint() -> None:
            self.store.save_partial(
                key,
                {
                    "num_images": done,
                    "predict_seconds": seconds,
                    "data_sha256": data_sha,
                    "confusion": confusion.matrix.tolist(),
                },
            )

        consistent = True  # False while a batch's counts are being added
        try:
            for batch in mine:
                items = [next(loader) for _ in batch]
                images, labels = [i["image"] for i in items], [i["label"] for i in items]
                counts, elapsed, pred = self._predict(images, labels, num_classes)
                for index, image_pred in zip(batch, pred, strict=True):
                    if index < maps:  # saved before the counts: a checkpoint implies its maps
                        label_map, stem = image_pred.cpu().numpy(), stems[index]
                        written[stem] = predictions.save_map(record_path, stem, label_map, colours)
                consistent = False
                confusion.merge(counts)
                done, seconds = done + len(images), seconds + elapsed
                consistent = True
                if progress is not None:
                    progress.advance(len(images))
                if (
                    self._checkpoints
                    and time.monotonic() - last_checkpoint >= self.settings.checkpoint_seconds
                ):
                    checkpoint()
                    last_checkpoint = time.monotonic()
        except KeyboardInterrupt:
            if self._checkpoints and consistent:  # else the last one stands
                checkpoint()
            raise
        provenance = {
            "version": key.data_version,
            "meta_sha256": meta_sha,
            "converter_version": dataset.meta.converter_version,
            "source": dataset.meta.source,
        }
        return Shard(confusion, done, seconds, provenance, stems[:maps], written)

    def _harness_threads(self) -> AbstractContextManager[None]:
        """Run the harness's own CPU tensor work on one torch thread while reader threads decode:
        on few cores, torch's intra-op threads would otherwise fight them (bench/eval_overhead.py).
        The adapter's predict keeps the thread policy's setting."""
        on_cpu = self.settings.device.type == "cpu" and self.settings.reader_threads > 0
        return torch_threads(1 if on_cpu else None)

    def _predict(
        self, images: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int
    ) -> tuple[ConfusionMatrix, float, torch.Tensor]:
        """Counts of one batch, the seconds its prediction took and the (B, H, W) uint8 maps."""
        device = self.settings.device
        with self._harness_threads():
            batch = torch.empty((len(images), *images[0].shape), dtype=torch.float32)
            for slot, image in zip(batch, images, strict=True):
                torch.div(image, 255.0, out=slot)  # uint8 -> [0,1] float in one pass
        batch = batch.to(device)
        start = time.perf_counter()
        with torch.inference_mode():
            scores = self.adapter.predict(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        expected = (batch.shape[0], num_classes, *batch.shape[2:])
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
            raise ValueError(
                f"adapter '{self.model_name}' returned scores of shape {shape}, expected {expected}"
            )
        if not scores.is_floating_point():
            raise ValueError(f"adapter '{self.model_name}' returned {scores.dtype} scores")
        counts = ConfusionMatrix(num_classes)
        with self._harness_threads():
            # max(dim).indices = argmax with ties to the first index, several times faster on
            # CPU; max propagates NaN, so checking the maxima finds every NaN that would vote
            best = scores.max(dim=1)
            if not torch.isfinite(best.values).all():
                raise ValueError(f"adapter '{self.model_name}' returned NaN or infinite scores")
            pred = best.indices.to(torch.uint8)
            for image_pred, label in zip(pred, labels, strict=True):
                counts.update(image_pred, label.to(pred.device))
        return counts, elapsed, pred

    def background_rule(self, vocabulary: Vocabulary) -> dict[str, Any] | None:
        """The vocabulary's rejection rule as recorded: class, index, threshold, and whether
        this adapter applies it (``Adapter.applies_background``); None without a rule."""
        rule = vocabulary.background_record()
        if rule is None:
            return None
        return {**rule, "applied": bool(self.adapter.applies_background)}

    def _record(
        self,
        entry: EvalEntry,
        key: RecordKey,
        measurement: Measurement,
        shard: Shard,
        hashes: dict[str, str],
    ) -> dict[str, Any]:
        network = self.adapter.network
        params = None
        if network is not None:
            counts = count_parameters(network, self.adapter.encoder_modules(network))
            params = {"total": counts["total"], "trainable": counts["trainable"]}
        facts = {
            "weights_origin": self.weights_origin,
            "background_rule": self.background_rule(entry.vocabulary),
            "inference": self.adapter.describe(),
            "params": params,
            "predictions": self._listing(key, shard.map_stems, hashes),
        }
        return make_record(
            key,
            measurement,
            classes=entry.vocabulary.names(),
            policy=self.settings.policy,
            adapter_facts=facts,
            data=shard.provenance,
        )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def batch_plan(sizes: list[Any], batch_size: int, first: int = 0) -> list[range]:
    """The index ranges of the batches of samples of these ``sizes``: consecutive samples of
    equal size, at most ``batch_size`` at a time; the first sample's index is ``first``."""
    plan: list[range] = []
    start = 0
    for index in range(1, len(sizes) + 1):
        if index == len(sizes) or index - start == batch_size or sizes[index] != sizes[start]:
            plan.append(range(first + start, first + index))
            start = index
    return plan
