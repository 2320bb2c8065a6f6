"""Evaluation engine: one adapter x the protocol's datasets -> one result record per dataset.

Images are visited in a fixed order; consecutive images of the same size are batched. The
confusion matrix of a dataset in progress is checkpointed, so an interrupted run resumes
where it stopped and ends with exactly the counts of an uninterrupted one.

Under torchrun (a ``Context`` with several processes) each process evaluates its shard of a
split's images (``Context.shard``: no padding, no duplicates), the int64 confusion matrices,
image counts and prediction seconds are summed over the processes, and rank 0 alone writes the
record, which equals a single-process run's. Partial checkpoints are off in that mode: an
interrupted distributed run restarts the dataset it was working on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import torch
from torch.utils.data import Subset

import ovrsisbench
from ovrsisbench.adapter import Adapter
from ovrsisbench.checkpoints import weights_origin
from ovrsisbench.data.layout import PreparedDataset, open_dataset
from ovrsisbench.data.loader import SegmentationDataset, read_ahead
from ovrsisbench.distributed import Context
from ovrsisbench.environment import describe_environment, device_name
from ovrsisbench.errors import DataError
from ovrsisbench.io import file_sha256, json_sha256
from ovrsisbench.metrics import DEFAULT_POLICY, ConfusionMatrix, compute_scores
from ovrsisbench.params import count_parameters
from ovrsisbench.protocol import EvalEntry, Protocol, Vocabulary
from ovrsisbench.results import SCHEMA, RecordKey, ResultStore
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
class EvalSettings:
    """How to run: device, batching, reader threads, checkpoint cadence."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 4
    reader_threads: int = 2
    checkpoint_seconds: float = 30.0
    policy: str = DEFAULT_POLICY


class Evaluator:
    """Runs one loaded adapter over protocol entries, writing records into ``store``.

    ``context`` (default: one process on ``settings.device``) makes it one of several processes
    under torchrun: then every process must call ``run`` with the same entries.
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
        self.weights_sha256 = file_sha256(weights) if weights else adapter.weights_sha256()
        self.weights_origin = weights_origin(weights, self.weights_sha256) if weights else None
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
        A small model runs on one CPU thread (``ovrsisbench.threads``)."""
        with model_threads(self.adapter.network, self.settings.device):
            if self.context.world_size > 1:
                return self._run_distributed(entries, progress)
            return self._run_single(entries, progress)

    def _run_single(self, entries: list[EvalEntry], progress: ProgressSink | None) -> list[Outcome]:
        outcomes = []
        for entry in entries:
            try:
                key = self.key(entry)
                existing = self.store.find(key)
                if existing is not None:
                    self.store.discard_partial(key)  # left over if a run died after saving
                    outcomes.append(
                        Outcome(entry.dataset, "skipped", existing, self.store.path_for(key))
                    )
                    continue
                record = self._evaluate(entry, key, progress)
                outcomes.append(Outcome(entry.dataset, "done", record, self.store.save(record)))
            except Exception as error:  # one broken dataset or adapter call must not stop the rest
                outcomes.append(
                    Outcome(entry.dataset, "failed", error=f"{type(error).__name__}: {error}")
                )
        return outcomes

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

    @staticmethod
    def _provenance(key: RecordKey, dataset: PreparedDataset, meta_sha: str) -> dict[str, Any]:
        return {
            "version": key.data_version,
            "meta_sha256": meta_sha,
            "converter_version": dataset.meta.converter_version,
            "source": dataset.meta.source,
        }

    def _evaluate(
        self, entry: EvalEntry, key: RecordKey, progress: ProgressSink | None
    ) -> dict[str, Any]:
        dataset, stems, meta_sha = self._open(entry)
        vocabulary = entry.vocabulary
        # a checkpoint is valid only for the very same files list and meta.json
        data_sha = json_sha256({"meta": meta_sha, "stems": stems})
        num_classes = len(vocabulary.classes)
        confusion = ConfusionMatrix(num_classes)
        state = self.store.load_partial(key)
        if state is not None and state.get("data_sha256") == data_sha:
            confusion.load(state["confusion"])
            done, seconds = state["num_images"], state["predict_seconds"]
        else:
            done, seconds = 0, 0.0
        if progress is not None:
            progress.start(entry.dataset, len(stems), done)

        self.use_vocabulary(vocabulary)
        samples = SegmentationDataset(dataset, entry.split, vocabulary.lookup_table(), start=done)
        loader = read_ahead(samples, threads=self.settings.reader_threads)
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
            for images, labels in _batches(loader, self.settings.batch_size):
                counts, elapsed = self._predict(images, labels, num_classes)
                consistent = False
                confusion.merge(counts)
                done, seconds = done + len(images), seconds + elapsed
                consistent = True
                if progress is not None:
                    progress.advance(len(images))
                if time.monotonic() - last_checkpoint >= self.settings.checkpoint_seconds:
                    checkpoint()
                    last_checkpoint = time.monotonic()
        except KeyboardInterrupt:
            if consistent:  # otherwise the last periodic checkpoint stands
                checkpoint()
            raise
        if done == 0:
            raise ValueError(f"split '{entry.split}' of {entry.dataset} has no images")
        provenance = self._provenance(key, dataset, meta_sha)
        return self._record(entry, key, confusion, done, seconds, provenance)

    # -- several processes (torchrun) ----------------------------------------------------------
    def _agree(self, error: str | None) -> str | None:
        """Collective: None when no process failed, else the same message on every process."""
        errors = self.context.all_gather_object(error)
        failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
        if not failed:
            return None
        if len(failed) == len(errors) and len({message for _, message in failed}) == 1:
            return failed[0][1]  # the same failure everywhere (a missing dataset, say)
        return "; ".join(f"process {rank}: {message}" for rank, message in failed)

    def _run_distributed(
        self, entries: list[EvalEntry], progress: ProgressSink | None
    ) -> list[Outcome]:
        """``run`` as one of several processes: each step ends in a collective that every
        process reaches, also when its own part failed, so no process waits forever and all
        return the same statuses; only rank 0 reads existing records and writes files."""
        ctx = self.context
        outcomes = []
        for entry in entries:
            error: str | None = None
            key: RecordKey | None = None
            existing: dict[str, Any] | None = None
            try:
                key = self.key(entry)
                if ctx.is_main:
                    existing = self.store.find(key)
            except Exception as caught:
                error = _describe(caught)
            failure = self._agree(error)
            # rank 0 alone decides whether the record exists; every process follows it
            found = torch.tensor([int(existing is not None)], dtype=torch.int64)
            ctx.all_reduce_sum(found)
            if failure is not None:
                outcomes.append(Outcome(entry.dataset, "failed", error=failure))
                continue
            assert key is not None
            if int(found.item()):
                if ctx.is_main:
                    self.store.discard_partial(key)  # partial checkpoints stay off here
                path = self.store.path_for(key)
                outcomes.append(Outcome(entry.dataset, "skipped", existing, path))
                continue

            shard = None
            try:
                shard = self._evaluate_shard(entry, key, progress)
            except Exception as caught:  # reported by every process after the next collective
                error = _describe(caught)
            failure = self._agree(error)
            if failure is not None:
                outcomes.append(Outcome(entry.dataset, "failed", error=failure))
                continue
            assert shard is not None
            confusion, done, seconds, provenance = shard
            counts = torch.from_numpy(confusion.matrix)  # int64: the sum is exact
            ctx.all_reduce_sum(counts)
            totals = torch.tensor([done], dtype=torch.int64)
            ctx.all_reduce_sum(totals)
            elapsed = torch.tensor([seconds], dtype=torch.float64)
            ctx.all_reduce_sum(elapsed)  # device seconds of all processes: ms/image per device
            num_images = int(totals.item())
            if num_images == 0:
                message = f"ValueError: split '{entry.split}' of {entry.dataset} has no images"
                outcomes.append(Outcome(entry.dataset, "failed", error=message))
                continue

            record = None
            try:
                if ctx.is_main:
                    total = ConfusionMatrix(confusion.num_classes)
                    total.load(counts.numpy())
                    record = self._record(
                        entry, key, total, num_images, float(elapsed.item()), provenance
                    )
                    self.store.save(record)
            except Exception as caught:
                error = _describe(caught)
            failure = self._agree(error)
            if failure is not None:
                outcomes.append(Outcome(entry.dataset, "failed", error=failure))
            else:
                outcomes.append(Outcome(entry.dataset, "done", record, self.store.path_for(key)))
        return outcomes

    def _evaluate_shard(
        self, entry: EvalEntry, key: RecordKey, progress: ProgressSink | None
    ) -> tuple[ConfusionMatrix, int, float, dict[str, Any]]:
        """This process's counts, images and prediction seconds over its shard of the split.

        No partial checkpoints (see the module's docstring); ``progress`` counts this shard."""
        dataset, stems, meta_sha = self._open(entry)
        vocabulary = entry.vocabulary
        # whole batches of the single-process run: every image is predicted in the same batch
        # (same companions, same padding) as there, so the scores, not only the rule, agree
        plan = batch_plan([dataset.sample_size(stem) for stem in stems], self.settings.batch_size)
        mine = [plan[i] for i in self.context.shard(len(plan))]
        indices = [index for batch in mine for index in batch]
        num_classes = len(vocabulary.classes)
        confusion = ConfusionMatrix(num_classes)
        if progress is not None:
            progress.start(entry.dataset, len(indices), 0)
        self.use_vocabulary(vocabulary)
        samples = SegmentationDataset(dataset, entry.split, vocabulary.lookup_table())
        loader = read_ahead(Subset(samples, indices), threads=self.settings.reader_threads)
        done, seconds = 0, 0.0
        samples_read = iter(loader)
        for batch in mine:
            items = [next(samples_read) for _ in batch]
            images, labels = [item["image"] for item in items], [item["label"] for item in items]
            counts, elapsed = self._predict(images, labels, num_classes)
            confusion.merge(counts)
            done, seconds = done + len(images), seconds + elapsed
            if progress is not None:
                progress.advance(len(images))
        return confusion, done, seconds, self._provenance(key, dataset, meta_sha)

    def _harness_threads(self) -> AbstractContextManager[None]:
        """Run the harness's own CPU tensor work on one torch thread while reader threads decode:
        on few cores, torch's intra-op threads would otherwise fight them (bench/eval_overhead.py).
        The adapter's predict keeps the thread policy's setting."""
        on_cpu = self.settings.device.type == "cpu" and self.settings.reader_threads > 0
        return torch_threads(1 if on_cpu else None)

    def _predict(
        self, images: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int
    ) -> tuple[ConfusionMatrix, float]:
        """Counts of one batch and the seconds its prediction took."""
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
        return counts, elapsed

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
        confusion: ConfusionMatrix,
        num_images: int,
        seconds: float,
        provenance: dict[str, Any],
    ) -> dict[str, Any]:
        matrix = confusion.matrix
        scores = compute_scores(matrix, self.settings.policy)
        network = self.adapter.network
        params = None
        if network is not None:
            counts = count_parameters(network, self.adapter.encoder_modules(network))
            params = {"total": counts["total"], "trainable": counts["trainable"]}
        return {
            "schema": SCHEMA,
            "model": key.model,
            "options": key.options,
            "weights_sha256": key.weights_sha256,
            "weights_origin": self.weights_origin,
            "protocol": key.protocol,
            "dataset": key.dataset,
            "split": key.split,
            "vocabulary": key.vocabulary,
            "classes": entry.vocabulary.names(),
            "background_rule": self.background_rule(entry.vocabulary),
            "confusion": matrix.tolist(),
            "metrics": scores.summary(),
            "per_class": {
                "iou": scores.iou,
                "acc": scores.acc,
                "gt_pixels": matrix.sum(axis=1).tolist(),
                "pred_pixels": matrix.sum(axis=0).tolist(),
            },
            "absent_class_policy": scores.policy,
            "num_images": num_images,
            "timing": {
                "ms_per_image": 1000.0 * seconds / num_images,
                "device": device_name(self.settings.device),
                "inference": self.adapter.describe(),
            },
            "params": params,
            "environment": {**describe_environment(), "data": provenance},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _closes_batch(count: int, first_size: Any, size: Any, batch_size: int) -> bool:
    """The batching rule: consecutive samples of equal size, at most ``batch_size`` at a time;
    a sample of ``size`` closes the batch of ``count`` samples that started with ``first_size``."""
    return count == batch_size or size != first_size


def _batches(
    loader: Any, batch_size: int
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """The batches of ``loader``'s samples under ``_closes_batch``."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for sample in loader:
        image = sample["image"]
        if images and _closes_batch(len(images), images[0].shape[1:], image.shape[1:], batch_size):
            yield images, labels
            images, labels = [], []
        images.append(image)
        labels.append(sample["label"])
    if images:
        yield images, labels


def batch_plan(sizes: list[Any], batch_size: int) -> list[range]:
    """The index ranges of the batches ``_batches`` forms from samples of these ``sizes``."""
    plan: list[range] = []
    start = 0
    for index in range(1, len(sizes) + 1):
        if index == len(sizes) or _closes_batch(
            index - start, sizes[start], sizes[index], batch_size
        ):
            plan.append(range(start, index))
            start = index
    return plan
