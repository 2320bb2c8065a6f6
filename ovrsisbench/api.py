"""The Python entry points: ``ovrsisbench.evaluate`` is what ``run``, ``demo`` and
``train --eval`` call, so a notebook gets exactly the records the command line writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovrsisbench.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ovrsisbench.adapter import Adapter
    from ovrsisbench.evaluation import Outcome, ProgressSink
    from ovrsisbench.protocol import Protocol

#: The scores of a run's table (``Evaluation.table``), in column order.
RUN_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")


@dataclass
class Evaluation:
    """What ``evaluate`` did: one ``Outcome`` per dataset of the protocol it evaluated."""

    model: str
    protocol: Protocol
    outcomes: list[Outcome]
    #: False on the processes other than rank 0 under torchrun, which hold no records.
    is_main: bool = True

    @property
    def records(self) -> list[dict[str, Any]]:
        """The result records, written now or found from an earlier run (as stored)."""
        return [outcome.record for outcome in self.outcomes if outcome.record is not None]

    @property
    def failed(self) -> list[Outcome]:
        """The datasets that could not be evaluated (``error`` says why)."""
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def table(self) -> pd.DataFrame:
        """One row per dataset: status, the scores (x100; empty where it failed), images."""
        import pandas as pd

        rows = []
        for outcome in self.outcomes:
            record = outcome.record or {}
            metrics = record.get("metrics", {})
            row = {"dataset": outcome.dataset, "status": outcome.status}
            row.update({name: metrics.get(name) for name in RUN_METRICS})
            row["images"] = record.get("num_images")
            rows.append(row)
        frame = pd.DataFrame(rows, columns=["dataset", "status", *RUN_METRICS, "images"])
        return frame.astype({name: "float64" for name in RUN_METRICS} | {"images": "Int64"})


def evaluate(
    model: str | Adapter,
    protocol: str | Path | Protocol | None = None,
    *,
    datasets: Sequence[str] | str | None = None,
    data_root: str | Path | None = None,
    results: str | Path | None = None,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
    options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    checkpoint_seconds: float | None = None,
    save_predictions: int | str | None = None,
    progress: ProgressSink | None = None,
) -> Evaluation:
    """Evaluate a model on a protocol's datasets and write one result record per dataset, as
    ``ovrsisbench run`` does (a record that exists for the same inputs is reused, a dataset
    interrupted half-way resumes); returns them.

    ``model``: an adapter name, a ``package.module:ClassName`` string (then built with
    ``options``), or an ``Adapter`` instance, created with its options and not yet loaded.
    It is loaded from ``weights`` (None: its default weights) onto ``device`` (``cpu``,
    ``cuda``; None: CUDA when available). ``protocol``: a name, a YAML path or a ``Protocol``
    (None: the model's own, as ``run``: ``segearth`` for segearth_ov, else ``dlrsd``);
    ``datasets`` picks some of its evaluation datasets (a list or comma-separated text).
    ``data_root`` / ``results``: as ``run`` (``$OVRSISBENCH_DATA`` or ./data,
    ``$OVRSISBENCH_RESULTS`` or ./results). ``batch_size`` (4), ``workers`` (2 reader
    threads) and ``checkpoint_seconds`` (30) as the options of ``run``. ``save_predictions``:
    keep the predicted maps of the first N images of each split (or ``"all"``) beside the
    records (``ovrsisbench.predictions``); an existing record lacking them gets them from a pass
    over just those images. ``progress`` receives
    ``start(dataset, total, done)`` and ``advance(count)`` calls (rank 0 only).

    Leaderboard files are not rewritten (``ovrsisbench leaderboard`` builds them from the
    records). Under torchrun every process calls it the same way: each evaluates its share of
    the images and rank 0 writes the records. User mistakes raise ``UserError``.
    """
    from ovrsisbench.adapter import Adapter
    from ovrsisbench.defaults import default_results, existing_data_root
    from ovrsisbench.distributed import process_group, requested_device
    from ovrsisbench.evaluation import EvalSettings, Evaluator
    from ovrsisbench.predictions import parse_request
    from ovrsisbench.protocol import Protocol, load_protocol
    from ovrsisbench.registry import create_adapter, load_adapter
    from ovrsisbench.results import ResultStore

    # checked in this order, all before anything is loaded: the command line's order
    given = protocol if isinstance(protocol, Protocol) else None
    if given is None and protocol is not None:
        given = load_protocol(str(protocol))
    if isinstance(model, Adapter):
        if options:
            raise UserError("options belong to the adapter instance: give them when creating it")
        adapter, name = model, model.name
    else:
        adapter, name = create_adapter(model, **(options or {})), model
    chosen = given or load_protocol(adapter.default_protocol)
    if isinstance(datasets, str):
        datasets = datasets.split(",")
    entries = chosen.select(list(datasets) if datasets is not None else None)
    for label, value, least in (
        ("batch_size", batch_size, 1),
        ("workers", workers, 0),
        ("checkpoint_seconds", checkpoint_seconds, 0),
    ):
        if value is not None and value < least:
            raise UserError(f"{label} must be at least {least}, got {value}")
    maps = parse_request(save_predictions)
    device_text = None if device is None else str(device)
    requested_device(device_text)  # the same checks and messages as under torchrun
    root = existing_data_root(None if data_root is None else Path(data_root))
    defaults = EvalSettings()
    with process_group(device_text) as ctx:
        load_adapter(adapter, None if weights is None else Path(weights), ctx.device)
        settings = EvalSettings(
            device=ctx.device,
            batch_size=defaults.batch_size if batch_size is None else batch_size,
            reader_threads=defaults.reader_threads if workers is None else workers,
            checkpoint_seconds=(
                defaults.checkpoint_seconds if checkpoint_seconds is None else checkpoint_seconds
            ),
            save_predictions=maps,
        )
        store = ResultStore(Path(results) if results is not None else default_results())
        weights_path = None if weights is None else Path(weights)
        evaluator = Evaluator(adapter, name, chosen, root, store, settings, weights_path, ctx)
        outcomes = evaluator.run(entries, progress if ctx.is_main else None)
        return Evaluation(name, chosen, outcomes, ctx.is_main)
