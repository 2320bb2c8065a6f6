"""The ``ovrsisbench`` command line: parse, call the core, print with rich.

Start-up stays light (``ovrsisbench --help`` in a fraction of a second, bench/cli_start.py):
torch, pandas, the models and the engines are imported inside the commands that use them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ovrsisbench import choices
from ovrsisbench.data.registry import DATASETS
from ovrsisbench.defaults import default_data_root, default_results, existing_data_root
from ovrsisbench.errors import UserError


class _Choice(str, Enum):
    """A value of an option with fixed values; it prints as the value itself."""

    def __str__(self) -> str:
        return self.value


def _choice(name: str, values: tuple[str, ...]) -> type[_Choice]:
    """An option type with fixed ``values``: ``--help`` lists them, shell completion offers
    them, and any other value is refused with the list."""
    return _Choice(name, [(value, value) for value in values])


Format = _choice("Format", choices.FORMATS)
Policy = _choice("Policy", choices.POLICIES)
Device = _choice("Device", choices.DEVICES)
BackboneName = _choice("BackboneName", choices.BACKBONES)
SourceKind = _choice("SourceKind", choices.SOURCE_KINDS)
EdgeMode = _choice("EdgeMode", choices.EDGE_MODES)
AmpMode = _choice("AmpMode", choices.AMP_MODES)
FigureFormat = _choice("FigureFormat", choices.FIGURE_FORMATS)
SVG = FigureFormat("svg")
RAW, EXCLUDE_ABSENT, CPU = SourceKind("raw"), Policy("exclude-absent"), Device("cpu")


def _value(choice: Enum | str | None) -> str | None:
    """The text of an option with fixed values (typer gives the Enum, Python callers a str)."""
    return choice.value if isinstance(choice, Enum) else choice


app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
adapters_app = typer.Typer(help="List, validate and inspect model adapters.", no_args_is_help=True)
datasets_app = typer.Typer(help="Inspect prepared datasets.", no_args_is_help=True)
protocols_app = typer.Typer(
    help="List protocols; show one with its seen and unseen classes.", no_args_is_help=True
)
app.add_typer(adapters_app, name="adapters")
app.add_typer(datasets_app, name="datasets")
app.add_typer(protocols_app, name="protocols")

console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from ovrsisbench import __version__

        console.print(f"ovrsisbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """Benchmark harness for open-vocabulary remote-sensing image segmentation (OVRSISBench)."""


DataRoot = Annotated[
    Path | None,
    typer.Option(
        help="Prepared data root [default: $OVRSISBENCH_DATA or ./data]", show_default=False
    ),
]
ResultsDir = Annotated[
    Path | None,
    typer.Option(
        help="Results folder [default: $OVRSISBENCH_RESULTS or ./results]", show_default=False
    ),
]
OptionList = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        help="Adapter option KEY=VALUE (repeatable; JSON values), e.g. -o inference=slide",
    ),
]
Backbone = Annotated[
    BackboneName | None,
    typer.Option(
        help="Backbone of a built-in model (another adapter's: -o backbone=NAME)",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    Device | None,
    typer.Option(
        help="Where the model runs; a GPU is picked with CUDA_VISIBLE_DEVICES [default: cuda "
        "if available, else cpu]",
        show_default=False,
    ),
]
PolicyOption = Annotated[
    Policy,
    typer.Option(
        help="Absent-class policy: exclude-absent (the published numbers') or mmseg "
        "(recomputed from the stored matrices)"
    ),
]


def parse_value(text: str) -> Any:
    """An option value: JSON scalars and lists (1, 2.5, true, null, [1, 2]), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: list[str] | None, backbone: Enum | str | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` strings to adapter options (values through ``parse_value``)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"option '{pair}' must look like KEY=VALUE")
        options[key] = parse_value(value)
    if backbone is not None:
        options["backbone"] = _value(backbone)
    return options


# -- commands ---------------------------------------------------------------------------------
def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@app.command()
def prepare(
    dataset: Annotated[
        str,
        typer.Argument(
            help=f"One of: {', '.join(DATASETS)}, or all",
            autocompletion=lambda: [*DATASETS, "all"],
            show_default=False,
        ),
    ],
    src: Annotated[
        Path,
        typer.Option(
            help="The download: a folder or an archive (for all: a folder with one subfolder "
            "per dataset; with --source archive: the OVSISBench root or its archive)"
        ),
    ],
    data_root: DataRoot = None,
    source: Annotated[
        SourceKind,
        typer.Option(help="The official download (raw) or the OVSISBench archive (archive)"),
    ] = RAW,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes [default: number of CPU cores, at most 4]"),
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option(help="Tile size in px; 0 = whole images [default: per dataset, see README]"),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(help="Tile stride in px [default: the tile, or the dataset's stride]"),
    ] = None,
    edge: Annotated[
        EdgeMode | None,
        typer.Option(help="Tiles at the border [default: per dataset]", show_default=False),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad", help="Leave out unreadable or inconsistent inputs (listed in meta.json)"
        ),
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="Converter option KEY=VALUE (repeatable), e.g. -o labels=eroded, -o tolerance=8",
        ),
    ] = None,
) -> None:
    """Convert a downloaded dataset into the unified layout under the data root (resumable)."""
    from ovrsisbench.data.prepare import PrepareSettings
    from ovrsisbench.data.prepare import prepare as prepare_datasets
    from ovrsisbench.display import TaskProgress, make_progress

    settings = PrepareSettings(
        tile=tile,
        stride=stride,
        edge=_value(edge),
        options=parse_options(option),
        workers=workers if workers is not None else default_workers(),
        skip_bad=skip_bad,
    )
    root = data_root or default_data_root()
    progress = TaskProgress(make_progress(err_console), label="")
    try:
        outcomes = prepare_datasets(dataset, src, root, _value(source), settings, progress)
    finally:
        progress.close()
    failed = False
    for outcome in outcomes:
        if outcome.skipped:
            err_console.print(
                f"{outcome.dataset}: skipped ({outcome.skipped})", highlight=False, soft_wrap=True
            )
        elif outcome.error:
            failed = True
            err_console.print(
                f"{outcome.dataset}: error: {outcome.error}", highlight=False, soft_wrap=True
            )
        else:
            _print_prepared(outcome.report, root)
    if failed:
        raise typer.Exit(1)
    if not any(outcome.report for outcome in outcomes):
        raise UserError(f"nothing prepared: no dataset found in {src}")


def _print_prepared(report: Any, root: Path) -> None:
    meta = report.meta
    splits = ", ".join(f"{k} {v:,}" for k, v in meta.splits.items() if k != "all")
    verification = meta.extra.get("verification", {})
    state = (
        "up to date"
        if report.up_to_date
        else f"{report.converted:,} source image(s) converted, {report.resumed:,} resumed"
    )
    console.print(
        f"{meta.name}: {meta.splits['all']:,} images ({splits or 'no splits'}) in "
        f"{root / meta.name}; {state}; {verification.get('unmatched_pixels', 0):,} unmatched "
        f"pixels; {len(verification.get('bad_inputs', [])):,} bad inputs skipped",
        highlight=False,
        soft_wrap=True,
    )
    for warning in report.warnings:
        err_console.print(f"{meta.name}: warning: {warning}", highlight=False, soft_wrap=True)


@app.command()
def run(
    model: Annotated[str, typer.Option(help="Adapter name, or package.module:ClassName")],
    protocol: Annotated[
        str | None,
        typer.Option(
            help="Protocol name (dlrsd, isaid, segearth, demo) or YAML path [default: the "
            "model's own protocol if it names one (segearth_ov: segearth), else dlrsd]",
            show_default=False,
        ),
    ] = None,
    datasets: Annotated[
        str | None, typer.Option(help="Comma-separated subset of the protocol's datasets")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for the adapter")] = None,
    backbone: Backbone = None,
    device: DeviceOption = None,
    data_root: DataRoot = None,
    results: ResultsDir = None,
    option: OptionList = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 4,
    workers: Annotated[
        int, typer.Option(min=0, help="Threads reading images ahead of the model (0 = inline)")
    ] = 2,
    checkpoint_seconds: Annotated[
        float, typer.Option(min=0, help="Save progress of the dataset in work this often")
    ] = 30.0,
    save_predictions: Annotated[
        str | None,
        typer.Option(
            metavar="N|all",
            help="Keep the predicted maps of the first N images of each split (or all) as "
            "indexed PNGs beside the records",
        ),
    ] = None,
) -> None:
    """Evaluate one adapter on a protocol's datasets; writes one record per dataset (resumes).

    Under torchrun (for example: torchrun --nproc-per-node 2 -m ovrsisbench run ...) every
    process loads the adapter on its device (cuda:LOCAL_RANK, or the CPU with gloo) and
    evaluates its share of each dataset's images; rank 0 alone prints and writes records and
    leaderboards.
    """
    evaluation = evaluate_and_report(
        model,
        protocol,
        datasets=datasets,
        data_root=data_root,
        results=results or default_results(),
        device=_value(device),
        weights=weights,
        options=parse_options(option, backbone),
        batch_size=batch_size,
        workers=workers,
        checkpoint_seconds=checkpoint_seconds,
        save_predictions=save_predictions,
    )
    if evaluation.failed:
        raise typer.Exit(1)


def evaluate_and_report(model: str, protocol: str | None, **arguments: Any) -> Any:
    """``ovrsisbench.evaluate`` with the command line's output on rank 0: a progress bar, the
    run's table, its errors, and the leaderboards rewritten."""
    from ovrsisbench.api import evaluate
    from ovrsisbench.display import TaskProgress, make_progress

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) != 0:  # the same collective steps, silently
        return evaluate(model, protocol, **arguments)
    if world > 1:
        err_console.print(
            f"distributed evaluation over {world} processes; progress shows rank 0's share; "
            "no partial checkpoints: an interrupted run restarts the dataset in progress",
            highlight=False,
            soft_wrap=True,
        )
    with make_progress(err_console) as progress:
        sink = TaskProgress(progress, f"{model} · ")
        evaluation = evaluate(model, protocol, progress=sink, **arguments)
    print_outcomes(evaluation)
    update_leaderboards(arguments["results"], evaluation.protocol)
    return evaluation


def print_outcomes(evaluation: Any) -> None:
    """The table of a run (numbers right-aligned), the folder of its records, its errors."""
    from ovrsisbench.display import format_number, new_table

    frame = evaluation.table()
    columns = list(frame.columns)
    numeric = [c not in ("dataset", "status") for c in columns]
    title = f"{evaluation.model} on protocol {evaluation.protocol.name}"
    table = new_table(columns, numeric, title)
    for row in frame.itertuples(index=False):
        if row.status == "failed":
            table.add_row(row.dataset, "[red]failed[/red]", *[""] * (len(columns) - 2))
            continue
        scores = [format_number(value) for value in row[2:-1]]
        table.add_row(row.dataset, row.status, *scores, f"{row.images:,}")
    console.print(table)
    paths = [outcome.path for outcome in evaluation.outcomes if outcome.path]
    folders = sorted({str(path.parent) for path in paths})
    if folders:
        console.print(f"records: {', '.join(folders)}", highlight=False, soft_wrap=True)
    for outcome in evaluation.failed:
        err_console.print(
            f"error: {outcome.dataset}: {outcome.error}", markup=False, soft_wrap=True
        )


def update_leaderboards(results_dir: Path, protocol: Any) -> None:
    from ovrsisbench.leaderboard import write_leaderboards
    from ovrsisbench.protocol import list_protocols, load_protocol

    protocols = {name: load_protocol(name) for name in list_protocols()}
    protocols[protocol.name] = protocol
    paths = write_leaderboards(results_dir, list(protocols.values()))
    console.print(
        f"leaderboards: {', '.join(str(path) for path in paths)}", highlight=False, soft_wrap=True
    )


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Trainable adapter name, or package.module:ClassName")],
    protocol: Annotated[
        str,
        typer.Option(help="Protocol name (dlrsd, isaid, demo) or YAML path: trains on its source"),
    ],
    backbone: Backbone = None,
    option: OptionList = None,
    weights: Annotated[Path | None, typer.Option(help="Initial weights for the adapter")] = None,
    max_iters: Annotated[
        int | None, typer.Option(min=1, help="Iterations [default: the recipe's]")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per iteration, over all processes [default: recipe's]"),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Base learning rate [default: recipe's]")] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            min=0, help="Weight decay of the groups at the recipe's default [default: recipe's]"
        ),
    ] = None,
    clip_norm: Annotated[
        float | None,
        typer.Option(min=0, help="Clip the total gradient L2 norm; 0 = off [default: recipe's]"),
    ] = None,
    warmup_iters: Annotated[
        int | None, typer.Option(min=0, help="Linear warm-up iterations [default: recipe's]")
    ] = None,
    accumulate: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Micro-batches per iteration (gradient accumulation) [default: 1; on resume "
            "the checkpoint's]",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Seed of the data order, augmentation, init [default: 0; on resume the "
            "checkpoint's]",
        ),
    ] = None,
    deterministic: Annotated[
        bool,
        typer.Option(
            "--deterministic",
            help="Use deterministic algorithms where PyTorch has them (slower)",
        ),
    ] = False,
    amp: Annotated[
        AmpMode | None,
        typer.Option(
            help="Mixed precision: auto = bf16 autocast on CUDA, off on the CPU [default: "
            "auto; on resume the checkpoint's]",
            show_default=False,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Save a checkpoint every N iterations")
    ] = 1000,
    log_every: Annotated[int, typer.Option(min=1, help="Log every N iterations")] = 10,
    workers: Annotated[int, typer.Option(min=0, help="Data loading processes")] = 2,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder [default: <results>/train/<model>-<protocol>]"),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out")
    ] = False,
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Evaluate the protocol with the trained weights")
    ] = False,
    device: DeviceOption = None,
    data_root: DataRoot = None,
    results: ResultsDir = None,
) -> None:
    """Train a trainable adapter on the protocol's source split (safetensors + JSON checkpoints).

    Under torchrun every process trains on its device with DistributedDataParallel; rank 0
    alone writes checkpoints and the log.
    """
    import torch

    from ovrsisbench.display import make_progress
    from ovrsisbench.distributed import cleanup, context, requested_device
    from ovrsisbench.protocol import load_protocol
    from ovrsisbench.registry import create_adapter, find_adapter, load_adapter
    from ovrsisbench.train import TrainSettings, seed_everything
    from ovrsisbench.train import train as train_adapter

    proto = load_protocol(protocol)
    proto.training_entry()  # an evaluation-only protocol is refused before any weights load
    if not find_adapter(model).cls.trainable:
        raise UserError(f"model '{model}' is not trainable (it is evaluated as is)")
    options = parse_options(option, backbone)
    adapter = create_adapter(model, **options)
    root = existing_data_root(data_root)
    results_dir = results or default_results()
    out_dir = out or results_dir / "train" / f"{_file_name(model)}-{_file_name(proto.name)}"
    settings = TrainSettings(
        max_iters=max_iters,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
        warmup_iters=warmup_iters,
        accumulate=accumulate,
        seed=seed,
        deterministic=deterministic,
        amp=_value(amp),
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        workers=workers,
    )
    requested_device(_value(device))  # the same checks and messages as under torchrun
    ctx = context(_value(device))
    try:
        seed_everything(seed or 0)  # a randomly initialised network is part of the run
        load_adapter(adapter, weights, ctx.device)
        if ctx.is_main:
            with make_progress(err_console) as progress:
                result = train_adapter(
                    adapter, proto, root, out_dir, settings, resume, progress, stop_on_signals=True
                )
            loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
            console.print(
                f"trained {model} for {result.iterations:,} iterations (last loss {loss}); "
                f"weights: {result.checkpoint}; log: {result.log}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            result = train_adapter(
                adapter, proto, root, out_dir, settings, resume, stop_on_signals=True
            )
        if evaluate:
            del adapter  # the evaluation loads its own copy from the final weights
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            evaluation = evaluate_and_report(
                model,
                protocol,
                data_root=root,
                results=results_dir,
                device=_value(device),
                weights=result.checkpoint,
                options=options,
            )
            if evaluation.failed:
                raise typer.Exit(1)
    finally:
        cleanup()


def _file_name(text: str) -> str:
    """``text`` as a safe file name part (module:Class and paths give their characters up)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


@app.command()
def leaderboard(
    protocol: Annotated[str, typer.Option(help="Protocol name or YAML path")] = "dlrsd",
    format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            help="table (fits the terminal), csv or md [default: table on a terminal, else md]",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write to this file (csv or md) instead of stdout")
    ] = None,
    with_reference: Annotated[
        bool,
        typer.Option(
            "--with-reference", help="Add the published rows of results/reference (marked so)"
        ),
    ] = False,
    fwiou: Annotated[bool, typer.Option("--fwiou", help="Add fwIoU columns")] = False,
    split_seen: Annotated[
        bool,
        typer.Option(
            "--split-seen",
            help="Add mIoU-seen, mIoU-unseen and hIoU per dataset (classes the protocol's "
            "training vocabulary has or not; see `protocols show`), from the stored matrices",
        ),
    ] = False,
    policy: PolicyOption = EXCLUDE_ABSENT,
    results: ResultsDir = None,
) -> None:
    """Print or write the leaderboard of a protocol, built from result records."""
    from ovrsisbench.io import atomic_write_text
    from ovrsisbench.leaderboard import build, print_leaderboard, render
    from ovrsisbench.protocol import load_protocol

    fmt = _value(format) or ("table" if console.is_terminal and out is None else "md")
    if fmt == "table" and out is not None:
        raise UserError("--format table is for the terminal; write csv or md to --out")
    results_dir = results or default_results()
    proto = load_protocol(protocol)
    refused: list[str] = []
    frame = build(proto, results_dir, with_reference, fwiou, _value(policy), refused, split_seen)
    for line in refused:
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    if frame.empty:
        _hint_other_protocols(proto.name, results_dir)
        if fmt != "csv" and out is None:
            return  # nothing to show but the hint (a CSV keeps its header for scripts)
    if fmt == "table":
        print_leaderboard(console, frame, f"leaderboard of protocol {proto.name}")
        return
    text = render(frame, fmt)
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        atomic_write_text(out, text)
        console.print(f"written: {out}", highlight=False, soft_wrap=True)


def _hint_other_protocols(protocol: str, results_dir: Path) -> None:
    """Say why a leaderboard is empty: which protocols have records in ``results_dir``."""
    from ovrsisbench.leaderboard import protocols_with_records

    others = [name for name in protocols_with_records(results_dir) if name != protocol]
    if others:
        hint = (
            f"note: no records of protocol {protocol} in {results_dir}; records exist for "
            f"protocol {', '.join(others)} (use --protocol {others[0]})"
        )
    else:
        hint = (
            f"note: no result records in {results_dir} (run `ovrsisbench run` first, or give "
            "--results DIR)"
        )
    err_console.print(hint, markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(
    protocol: Annotated[str, typer.Option(help="Protocol name or YAML path")],
    out: Annotated[Path, typer.Option(help="Folder to write index.html and figures/ into")],
    results: ResultsDir = None,
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="Prepared data root, for the images and labels of the prediction grids "
            "[default: $OVRSISBENCH_DATA or ./data when it exists]",
            show_default=False,
        ),
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Only these models' rows, comma-separated (e.g. a,b)")
    ] = None,
    format: Annotated[
        FigureFormat, typer.Option("--format", help="File format of the standalone figures")
    ] = SVG,
) -> None:
    """Write a static HTML report of a protocol's results: the leaderboard and figures (speed
    vs mIoU, vocabulary overlap, per-class IoU, confusion matrices, predictions)."""
    from ovrsisbench.report import write_report

    if data_root is not None:
        root: Path | None = existing_data_root(data_root)
    else:  # the default data root is optional: without it the grids show predictions only
        root = default_data_root() if default_data_root().is_dir() else None
    index = write_report(
        protocol,
        results or default_results(),
        out,
        data_root=root,
        models=[name.strip() for name in models.split(",") if name.strip()] if models else None,
        fmt=_value(format),
        progress=lambda line: console.print(line, markup=False, highlight=False),
    )
    console.print(f"report: {index}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def submit(
    model: Annotated[str, typer.Option(help="The model whose result records to submit")],
    out: Annotated[Path, typer.Option(help="The submission file to write (JSON)")],
    protocol: Annotated[
        str | None,
        typer.Option(help="Protocol name [default: the one the model has complete records for]"),
    ] = None,
    option: OptionList = None,
    backbone: Backbone = None,
    weights_sha256: Annotated[
        str | None, typer.Option(help="Pick the configuration whose weights hash starts so")
    ] = None,
    results: ResultsDir = None,
) -> None:
    """Bundle a model's result records on one protocol (every evaluation dataset) with its
    provenance and a SHA-256 of every record into one submission file."""
    from ovrsisbench.io import atomic_write_text
    from ovrsisbench.protocol import load_protocol
    from ovrsisbench.submission import build_submission, verify_submission

    submission = build_submission(
        model,
        results or default_results(),
        load_protocol(protocol) if protocol else None,
        parse_options(option, backbone),
        weights_sha256,
    )
    verdict = verify_submission(json.loads(json.dumps(submission)), str(out))
    if not verdict.verified:  # our own records should always verify: say what broke
        raise UserError(f"the submission would not verify: {'; '.join(verdict.problems)}")
    atomic_write_text(out, json.dumps(submission, indent=1) + "\n")
    datasets = ", ".join(entry["dataset"] for entry in submission["protocol"]["evaluation"])
    console.print(
        f"submission of {model} on {submission['protocol']['name']} ({datasets}) written: {out}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="A submission file (from ovrsisbench submit)")],
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="Compare image and pixel counts with the datasets prepared here (same data "
            "version only) [default: $OVRSISBENCH_DATA or ./data, when present]"
        ),
    ] = None,
    check_labels: Annotated[
        bool,
        typer.Option(
            "--check-labels",
            help="Also count every class's ground-truth pixels in those labels (reads them all)",
        ),
    ] = False,
) -> None:
    """Check a submission from its data alone, never importing or running code it names:
    schema, completeness, class lists and vocabulary hashes, confusion matrices, every metric
    recomputed, record hashes. Exit code 1 when it does not verify."""
    from ovrsisbench.submission import check_local_data, read_submission

    verdict = read_submission(file)
    root = data_root or default_data_root()
    if verdict.verified and root.is_dir():
        check_local_data(verdict, root, check_labels)
    for note in verdict.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if verdict.verified:
        adapter, protocol = verdict.adapter, verdict.protocol
        console.print(
            f"VERIFIED: {file}: {adapter['name']} {adapter['version'] or ''} on protocol "
            f"{protocol.name}, {len(verdict.records)} datasets, every metric recomputed",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"REJECTED: {file}: {len(verdict.problems)} problem(s)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for problem in verdict.problems:
        console.print(f"- {problem}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@adapters_app.command("list")
def adapters_list() -> None:
    """Show every discoverable adapter: name, origin, trainable or not, what it is."""
    from ovrsisbench.display import new_table
    from ovrsisbench.registry import list_adapters

    table = new_table(("name", "origin", "trainable", "description"), [False] * 4, "adapters")
    entries, problems = list_adapters()
    for entry in entries:
        summary = (entry.cls.__doc__ or "").strip().splitlines()
        table.add_row(
            entry.name,
            entry.origin,
            "yes" if entry.cls.trainable else "no",
            entry.cls.description or (summary[0] if summary else ""),
        )
    console.print(table)
    for problem in problems:
        err_console.print(f"warning: {problem}", markup=False, soft_wrap=True)


@adapters_app.command("validate")
def adapters_validate(
    name: Annotated[str, typer.Argument(help="Adapter name, or package.module:ClassName")],
    weights: Annotated[Path | None, typer.Option(help="Weights file for the adapter")] = None,
    backbone: Backbone = None,
    device: Annotated[Device, typer.Option(help="Where the model runs")] = CPU,
    option: OptionList = None,
) -> None:
    """Check an adapter against the contract on generated inputs; lists every breach."""
    from ovrsisbench.distributed import requested_device
    from ovrsisbench.registry import create_adapter, load_adapter
    from ovrsisbench.validate import validate_adapter

    torch_device = requested_device(_value(device))
    try:
        adapter = create_adapter(name, **parse_options(option, backbone))
        load_adapter(adapter, weights, torch_device)
    except UserError as error:
        console.print(f"[red]FAIL[/red] create and load: {error}", soft_wrap=True)
        err_console.print(f"error: adapter '{name}' cannot be created and loaded")
        raise typer.Exit(1) from None
    checks = validate_adapter(adapter, torch_device)
    for check in checks:
        mark = "[green]ok[/green]  " if check.problem is None else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name}" + (f": {check.problem}" if check.problem else ""))
    failed = [c for c in checks if c.problem is not None]
    if failed:
        err_console.print(f"error: adapter '{name}' breaks the contract in {len(failed)} check(s)")
        raise typer.Exit(1)
    console.print(f"adapter '{name}' passed all {len(checks)} checks")


@adapters_app.command("info")
def adapters_info(
    name: Annotated[str, typer.Argument(help="Adapter name, or package.module:ClassName")],
    backbone: Backbone = None,
    option: OptionList = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Parameter counts (total, trainable; per group) of the model, built on the meta device."""
    from ovrsisbench.display import new_table
    from ovrsisbench.params import adapter_parameters
    from ovrsisbench.registry import create_adapter

    adapter = create_adapter(name, **parse_options(option, backbone))
    try:
        counts = adapter_parameters(adapter)
    except NotImplementedError as error:
        raise UserError(str(error)) from error
    if as_json:
        sys.stdout.write(json.dumps(counts) + "\n")
        return
    table = new_table(("group", "total", "trainable"), [False, True, True], f"{name} parameters")
    for group, numbers in counts["groups"].items():
        table.add_row(group, f"{numbers['total']:,}", f"{numbers['trainable']:,}")
    table.add_row("all", f"{counts['total']:,}", f"{counts['trainable']:,}", style="bold")
    console.print(table)


@datasets_app.command("list")
def datasets_list(data_root: DataRoot = None) -> None:
    """Show each prepared dataset under the data root with its class and image counts."""
    from ovrsisbench.data.layout import list_datasets
    from ovrsisbench.display import new_table

    root = existing_data_root(data_root)
    prepared = list_datasets(root)
    if not prepared:
        console.print(
            f"no prepared datasets in {root} (prepare one with: ovrsisbench prepare DATASET "
            "--src PATH)",
            highlight=False,
            soft_wrap=True,
        )
        return
    columns = ("dataset", "classes", "all", "train", "val", "source", "created")
    numeric = [c in ("classes", "all", "train", "val") for c in columns]
    table = new_table(columns, numeric, f"prepared datasets in {root}")
    for dataset in prepared:
        meta = dataset.meta
        counts = [meta.splits.get(split) for split in ("all", "train", "val")]
        table.add_row(
            meta.name,
            str(len(meta.classes)),
            *("-" if count is None else f"{count:,}" for count in counts),
            str(meta.source.get("kind", "")),
            meta.created[:10],  # the day
        )
    console.print(table)


@protocols_app.command("list")
def protocols_list() -> None:
    """Show the packaged protocols: what each trains on and evaluates."""
    from ovrsisbench.protocol import list_protocols, load_protocol
    from ovrsisbench.protocol_view import print_protocol_list

    print_protocol_list(console, [load_protocol(name) for name in list_protocols()])


@protocols_app.command("show")
def protocols_show(
    protocol: Annotated[str, typer.Argument(help="Protocol name or YAML path")],
) -> None:
    """A protocol's entries and, per evaluation dataset, its seen and unseen classes."""
    from ovrsisbench.protocol import load_protocol
    from ovrsisbench.protocol_view import print_protocol

    print_protocol(console, load_protocol(protocol))


@app.command()
def show(
    record: Annotated[
        Path | None,
        typer.Argument(help="A result record file (else pick records with --model and --dataset)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="The model whose records to show")] = None,
    dataset: Annotated[str | None, typer.Option(help="The dataset whose records to show")] = None,
    protocol: Annotated[
        str | None, typer.Option(help="Only records of this protocol [default: any]")
    ] = None,
    option: OptionList = None,
    backbone: Backbone = None,
    weights_sha256: Annotated[
        str | None, typer.Option(help="Only records whose weights hash starts so")
    ] = None,
    policy: PolicyOption = EXCLUDE_ABSENT,
    results: ResultsDir = None,
) -> None:
    """Per-class IoU and accuracy of result records, with class names (as mmseg prints after a
    test), and each record's headline numbers."""
    from ovrsisbench.record_view import RecordFilter, find_records, print_record

    if record is not None:
        if model or dataset or protocol or option or backbone or weights_sha256:
            raise UserError("give a record file, or pick records with --model and --dataset")
        from ovrsisbench.results import read_record

        found = [(record, read_record(record))]
    else:
        if not model or not dataset:
            raise UserError("give a record file, or both --model and --dataset")
        wanted = RecordFilter(
            model, dataset, protocol, parse_options(option, backbone), weights_sha256
        )
        found = find_records(results or default_results(), wanted)
    for number, (path, data) in enumerate(found):
        if number:
            console.print()
        print_record(console, path, data, _value(policy))


@app.command()
def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Keep the demo's data, records, checkpoints and leaderboard in this folder "
            "[default: a temporary folder, removed at the end]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the whole pipeline offline on a generated SYNTHETIC benchmark (proves the pipeline)."""
    from ovrsisbench.demo import run_demo

    if not run_demo(out, console, stop_on_signals=True):
        raise typer.Exit(1)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


INTERRUPTED = 130  # the shell's exit status of a command stopped by Ctrl-C


def _open_consoles() -> None:
    """The consoles of this invocation: their width is the terminal's (or $COLUMNS) now."""
    global console, err_console
    console, err_console = Console(), Console(stderr=True)


def main() -> None:
    """Console-script entry point: user mistakes become one line on stderr and exit code 2."""
    _open_consoles()
    try:
        from ovrsisbench.threads import requested_threads

        requested_threads()  # a bad OVRSISBENCH_THREADS fails before any work
        code = app(prog_name="ovrsisbench", standalone_mode=False)
    except typer.Abort:  # end of input at a prompt
        code = INTERRUPTED
    except UserError as error:
        _fail(str(error))
    except OSError as error:  # e.g. --out naming an unwritable place
        _fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
    except Exception as error:
        _command_line_error(error)
        raise
    if code == INTERRUPTED:  # typer turns KeyboardInterrupt (Ctrl-C, SIGTERM in train) into 130
        _fail(
            "interrupted (run, prepare and demo --out DIR resume when the same command is run "
            "again; train continues with --resume)",
            INTERRUPTED,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _command_line_error(error: Exception) -> None:
    """Exit with one line for a parsing error of typer's click (vendored or not); else return."""
    if type(error).__name__ == "NoArgsIsHelpError":
        error.show()  # a bare command group: show its help
        sys.exit(error.exit_code)
    if callable(getattr(error, "format_message", None)) and hasattr(error, "exit_code"):
        ctx = getattr(error, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _fail(error.format_message() + hint, error.exit_code)
