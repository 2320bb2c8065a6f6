"""The generic trainer: any trainable adapter's recipe on a protocol's source split.

The adapter gives its network, parameter groups, loss and train transform
(``Adapter.training_recipe``); the trainer owns the loop: AdamW with one group per recipe group
(LR multipliers, weight decay), linear warm-up then cosine to zero (detectron2 WarmupCosineLR),
clipping of the total L2 gradient norm, bf16 autocast on CUDA, gradient accumulation, seeding,
checkpoints and logging. Under torchrun the network is wrapped in DistributedDataParallel and
only rank 0 writes files.

Exact resume: the data order is a pure function of (seed, sample position) and every sample's
augmentation draws from a generator seeded by (seed, epoch, index); every iteration reseeds the
global RNGs (torch, numpy, random) from (seed, iteration, rank). So iteration ``i`` sees the same
batch and the same random numbers whether or not the run was interrupted before it, on every
rank, without saving any RNG state.

Files in ``out``: the checkpoints (``ovrsisbench.checkpoints``; only the latest periodic one
is kept, plus ``final``) and ``log.jsonl``, one JSON object per logged iteration. The data
stream is ``ovrsisbench.train_data``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ovrsisbench
from ovrsisbench.adapter import Adapter, TrainingRecipe
from ovrsisbench.checkpoints import (
    FINAL,
    latest_checkpoint,
    load_checkpoint,
    read_json,
    write_checkpoint,
)
from ovrsisbench.choices import AMP_MODES
from ovrsisbench.data.layout import open_dataset
from ovrsisbench.data.loader import SegmentationDataset, _OneLineErrorLoader
from ovrsisbench.environment import describe_environment
from ovrsisbench.errors import UserError
from ovrsisbench.io import atomic_write_text
from ovrsisbench.protocol import Protocol
from ovrsisbench.threads import model_threads
from ovrsisbench.train_data import BatchPlan, TrainSamples, collate

LOG_FILE = "log.jsonl"
WARMUP_FACTOR = 0.001  # detectron2's default: the warm-up starts at 0.1 % of the LR
_ITERATION = 0x6974  # first word of the per-iteration seed sequences (see train_data)
# settings that shape the trajectory: a resume must use the checkpoint's
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_RECIPE_KEYS = ("max_iters", "batch_size", "lr", "weight_decay", "clip_norm", "warmup_iters")
_FIXED_KEYS = ("seed", "amp")
_DIVERGED_HINT = (
    "nothing after the last checkpoint was saved; train again into a new --out with a lower --lr "
    "or --amp off (a resume keeps the checkpoint's settings)"
)
#: values of the settings that neither the recipe nor a checkpoint gives
_FALLBACKS = {"accumulate": 1, "seed": 0, "amp": "auto"}
#: the recipe's LR schedule (``TrainingRecipe.defaults``; not a command-line setting)
LR_SCHEDULES = ("cosine", "poly")
_SCHEDULE_FALLBACKS = {"lr_schedule": "cosine", "poly_power": 0.9}


@dataclass
class TrainSettings:
    """How to train; ``None`` takes the recipe's default (or, on resume, the checkpoint's)."""

    max_iters: int | None = None
    batch_size: int | None = None  # per iteration, total over processes and micro-batches
    lr: float | None = None
    weight_decay: float | None = None  # replaces the recipe's default decay (groups at 0 stay 0)
    clip_norm: float | None = None  # total L2 norm bound; 0 switches clipping off
    warmup_iters: int | None = None
    accumulate: int | None = None  # micro-batches per iteration (1; may change on resume)
    seed: int | None = None  # 0
    deterministic: bool = False
    amp: str | None = None  # "auto" (bf16 autocast on CUDA, off on CPU) | "bf16" | "off"
    checkpoint_every: int = 1000
    log_every: int = 10
    workers: int = 2  # DataLoader worker processes (0: load in the main process)


@dataclass
class TrainResult:
    """What a finished training left behind."""

    iterations: int  # iterations done in total (resumed ones included)
    checkpoint: Path  # out/final.safetensors
    loss: float | None  # the last logged loss (mean over its logging window)
    log: Path  # out/log.jsonl


# -- schedule and seeding -------------------------------------------------------------------------
def _cosine(where: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * where))


def lr_factor(
    iteration: int,
    max_iters: int,
    warmup_iters: int = 0,
    schedule: str = "cosine",
    poly_power: float = 0.9,
) -> float:
    """The LR multiplier of 0-based ``iteration`` t of T, with W warm-up iterations.

    ``cosine``: detectron2's ``build_lr_scheduler`` for WarmupCosineLR (``LRMultiplier`` over
    ``WarmupParamScheduler(CosineParamScheduler(1, 0))``): cos(w) = 0.5 * (1 + cos(pi * w)) at
    w = t / T, and during warm-up the line from 0.001 * cos(0) to cos(W / T).
    ``poly``: detectron2 DeepLab's WarmupPolyLR (SAN, Mask2Former): (1 - t / T) ** power, times
    the linear warm-up factor 0.001 * (1 - t / W) + t / W while t < W.
    """
    where = iteration / max_iters
    if schedule == "poly":
        warmup = 1.0
        if iteration < warmup_iters:
            alpha = iteration / warmup_iters
            warmup = WARMUP_FACTOR * (1 - alpha) + alpha
        return warmup * (1.0 - where) ** poly_power
    if iteration >= warmup_iters:
        return _cosine(where)
    start, end = WARMUP_FACTOR * _cosine(0.0), _cosine(warmup_iters / max_iters)
    return start + (end - start) * iteration / warmup_iters


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """The 64-bit seed of one iteration on one rank."""
    words = np.random.SeedSequence([_ITERATION, seed, iteration, rank]).generate_state(1, np.uint64)
    return int(words[0])


# -- settings -------------------------------------------------------------------------------------
def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"training setting {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _non_negative(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"training setting {name} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise UserError(f"training setting {name} must be {'>' if positive else '>='} 0")
    return float(value)


def resolve_settings(
    settings: TrainSettings, defaults: dict[str, Any], saved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every setting with a value: given ones, else the checkpoint's (``saved``, on resume), else
    the recipe's (else ``_FALLBACKS``). Explicit values of the settings that shape the run
    (recipe ones, seed, amp) that differ from a resumed checkpoint's are an error; accumulate,
    workers and the cadences may change."""
    given = asdict(settings)
    if saved is not None:
        differ = [
            key
            for key in (*_RECIPE_KEYS, *_FIXED_KEYS)
            if given[key] is not None and given[key] != saved.get(key)
        ]
        if differ:
            shown = ", ".join(f"{k}={given[k]!r} (checkpoint: {saved.get(k)!r})" for k in differ)
            raise UserError(
                f"resume needs the checkpoint's settings: {shown}; drop them or train into "
                "another --out"
            )
    resolved = dict(given)
    for key in _RECIPE_KEYS:
        if resolved[key] is None:
            resolved[key] = saved[key] if saved is not None else defaults.get(key)
    for key, fallback in _FALLBACKS.items():
        if resolved[key] is None:
            resolved[key] = saved.get(key, fallback) if saved is not None else fallback
    for key, fallback in _SCHEDULE_FALLBACKS.items():
        resolved[key] = (saved if saved is not None else defaults).get(key, fallback)
    if resolved["lr_schedule"] not in LR_SCHEDULES:
        raise UserError(
            f"unknown lr_schedule {resolved['lr_schedule']!r} (use {', '.join(LR_SCHEDULES)})"
        )
    resolved["poly_power"] = _non_negative(resolved["poly_power"], "poly_power")
    missing = [key for key in ("max_iters", "batch_size", "lr") if resolved[key] is None]
    if missing:
        raise UserError(f"the recipe gives no default {missing[0]}; set it explicitly")
    resolved["max_iters"] = _positive_int(resolved["max_iters"], "max_iters")
    resolved["batch_size"] = _positive_int(resolved["batch_size"], "batch_size")
    resolved["warmup_iters"] = _positive_int(resolved["warmup_iters"] or 0, "warmup_iters", 0)
    resolved["accumulate"] = _positive_int(resolved["accumulate"], "accumulate")
    resolved["seed"] = _positive_int(resolved["seed"], "seed", 0)
    resolved["checkpoint_every"] = _positive_int(resolved["checkpoint_every"], "checkpoint_every")
    resolved["log_every"] = _positive_int(resolved["log_every"], "log_every")
    resolved["workers"] = _positive_int(resolved["workers"], "workers", 0)
    resolved["lr"] = _non_negative(resolved["lr"], "lr", positive=True)
    if resolved["weight_decay"] is not None:
        resolved["weight_decay"] = _non_negative(resolved["weight_decay"], "weight_decay")
    if resolved["clip_norm"] is not None:
        resolved["clip_norm"] = _non_negative(resolved["clip_norm"], "clip_norm")
    if resolved["amp"] not in AMP_MODES:
        raise UserError(f"unknown amp mode {resolved['amp']!r} (use {', '.join(AMP_MODES)})")
    return resolved


def _use_bf16(amp: str, device: torch.device) -> bool:
    return amp == "bf16" or (amp == "auto" and device.type == "cuda")


# -- the optimiser --------------------------------------------------------------------------------
def build_optimizer(
    recipe: TrainingRecipe, lr: float, weight_decay: float | None
) -> torch.optim.AdamW:
    """AdamW with one group per recipe group: LR ``lr * lr_mult`` and the group's weight decay;
    ``weight_decay`` (when given) replaces the recipe's default value in the groups that use it."""
    default_decay = recipe.defaults.get("weight_decay")
    groups, seen = [], set()
    for index, group in enumerate(recipe.param_groups):
        name = str(group.get("name", index))
        missing = [k for k in ("params", "lr_mult", "weight_decay") if k not in group]
        if missing:
            raise UserError(f"the recipe's parameter group '{name}' has no {missing[0]!r}")
        params = list(group["params"])
        for param in params:
            if not param.requires_grad:
                raise UserError(f"the recipe's parameter group '{name}' holds a frozen tensor")
            if id(param) in seen:
                raise UserError("a tensor appears in two of the recipe's parameter groups")
            seen.add(id(param))
        decay = float(group["weight_decay"])
        if weight_decay is not None and decay == default_decay and decay != 0:
            decay = weight_decay
        mult = float(group["lr_mult"])
        groups.append(
            {
                "params": params,
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": decay,
                "name": name,
            }
        )
    if not seen:
        raise UserError("the recipe has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr)


class _LossModule(torch.nn.Module):
    """The network with the recipe's loss as its forward, so DistributedDataParallel sees the
    forward pass that the loss runs (and synchronises the gradients of its backward)."""

    def __init__(self, module: torch.nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self.loss = loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(images, labels)


# -- the trainer ----------------------------------------------------------------------------------
@contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms where PyTorch has them (and no cuDNN autotuning) while training,
    restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: some CUDA backward kernels (bilinear upsampling, NLL loss) have no
    # deterministic version; they warn and run instead of stopping the run
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = benchmark


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops between
    iterations and then shuts them down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class _Trainer:
    """One training run's state; ``train`` builds it and calls ``run``."""

    def __init__(
        self,
        adapter: Adapter,
        protocol: Protocol,
        data_root: Path,
        out: Path,
        settings: TrainSettings,
        resume: bool,
        progress: Any,
        stop_on_signals: bool = False,
    ) -> None:
        from ovrsisbench.distributed import context

        if not adapter.trainable:
            raise UserError(f"model '{adapter.name}' is not trainable (it is evaluated as is)")
        self.adapter = adapter
        self.protocol = protocol
        self.out = Path(out)
        self.stop_on_signals = stop_on_signals
        entry = protocol.training_entry()
        dataset = open_dataset(data_root, entry.dataset)
        entry.vocabulary.check_dataset(dataset.meta.classes, str(dataset.directory / "meta.json"))
        self.samples = SegmentationDataset(dataset, entry.split, entry.vocabulary.lookup_table())
        if len(self.samples) == 0:
            raise UserError(f"split '{entry.split}' of {entry.dataset} has no images to train on")
        self.identity = {
            "model": adapter.name,
            "options": adapter.options,
            "protocol": protocol.name,
            "train": {
                "dataset": entry.dataset,
                "split": entry.split,
                "vocabulary": {"name": entry.vocabulary.name, "sha256": entry.vocabulary.sha256},
                "data_version": dataset.meta.version(),
            },
        }
        self.recipe = adapter.training_recipe(entry.vocabulary.prompts())
        self.module = self.recipe.module
        device = next(self.module.parameters()).device
        # under torchrun every process computes on its own device (cuda:LOCAL_RANK or the CPU);
        # a single process stays where the adapter was loaded
        self.ctx = context(device.type)
        self.device = self.ctx.device if self.ctx.world_size > 1 else device
        self.module.to(self.device)
        self.progress = progress if self.ctx.is_main else None

        found = latest_checkpoint(self.out)
        final = (self.out / f"{FINAL}.json").exists()
        seen = self.ctx.all_gather_object((found[0] if found else None, final))
        if any(view != seen[0] for view in seen):
            views = "; ".join(
                f"process {rank}: checkpoint {it}, final {'yes' if done else 'no'}"
                for rank, (it, done) in enumerate(seen)
            )
            raise UserError(
                f"the processes see different runs in {self.out} ({views}): --out must be one "
                "folder shared by every process (on several machines, a shared filesystem)"
            )
        if resume and found is None:
            raise UserError(
                f"no checkpoint to resume in {self.out} (train without --resume to start)"
            )
        if not resume and (found is not None or final):
            raise UserError(
                f"{self.out} already holds a training run; give --resume to continue it, or "
                "another --out"
            )
        self.start = 0
        saved_config = None
        if found is not None:
            saved_config = read_json(found[1])
            self._check_identity(saved_config, found[1])
        # what training started from (kept through resumes): the adapter's weights identity
        self.initial_weights = (
            saved_config.get("initial_weights")
            if saved_config
            else {"sha256": adapter.weights_sha256()}
        )
        self.settings = resolve_settings(
            settings, self.recipe.defaults, saved_config["settings"] if saved_config else None
        )
        s = self.settings
        world, accumulate = self.ctx.world_size, s["accumulate"]
        if s["batch_size"] % (world * accumulate):
            raise UserError(
                f"batch size {s['batch_size']} must be divisible by accumulate ({accumulate}) "
                f"x processes ({world})"
            )
        self.bf16 = _use_bf16(s["amp"], self.device)
        self.optimizer = build_optimizer(self.recipe, s["lr"], s["weight_decay"])
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.window = [0.0, 0]  # loss sum and iteration count since the last logged iteration
        self.last_loss: float | None = None
        self.stop_requested = False  # set by SIGINT / SIGTERM while training
        if found is not None:
            self._load(found[1], saved_config)

    # -- identity and checkpoints --------------------------------------------------------------
    def _check_identity(self, config: dict, path: Path) -> None:
        saved = {key: config.get(key) for key in self.identity}
        current = json.loads(json.dumps(self.identity))
        differ = [key for key in current if saved[key] != current[key]]
        if differ:
            raise UserError(
                f"{path}: was trained with another {', '.join(differ)} "
                f"({'; '.join(f'{k}: {saved[k]}' for k in differ)}); resume with the same or "
                "train into another --out"
            )

    def _config(self) -> dict[str, Any]:
        return {
            **self.identity,
            "settings": self.settings,
            "recipe_defaults": self.recipe.defaults,
            "world_size": self.ctx.world_size,
            "code_version": ovrsisbench.__version__,
            "environment": describe_environment(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "initial_weights": self.initial_weights,
        }

    def _load(self, config_path: Path, config: dict) -> None:
        progress = load_checkpoint(config_path, config, self.module, self.optimizer)
        try:
            self.window = [float(progress["window"][0]), int(progress["window"][1])]
            self.last_loss = progress["last_loss"]
        except (KeyError, TypeError, IndexError, ValueError) as error:
            raise UserError(f"{config_path}: corrupted checkpoint ({error!r})") from None
        self.start = config["iteration"]

    def _save(self, iteration: int, done: bool) -> None:
        """Checkpoint ``iteration`` (and the final weights when ``done``): rank 0 writes, every
        rank waits."""
        if self.ctx.is_main:
            progress = {"window": self.window, "last_loss": self.last_loss}
            config = self._config()
            write_checkpoint(
                self.out, iteration, self.module, self.optimizer, config, progress, done
            )
        self.ctx.barrier()

    def _prepare_log(self) -> None:
        """A fresh log, or on resume the log up to the checkpoint (later lines belong to the
        interrupted run and will be written again)."""
        if self.ctx.is_main:
            path = self.out / LOG_FILE
            kept = []
            if self.start and path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        if json.loads(line)["iteration"] <= self.start:
                            kept.append(line + "\n")
                    except (json.JSONDecodeError, KeyError, TypeError):
                        break  # a torn last line of a killed run
            atomic_write_text(path, "".join(kept))
        self.ctx.barrier()

    # -- the loop ------------------------------------------------------------------------------
    def _loader(self) -> Any:
        s = self.settings
        plan = BatchPlan(
            len(self.samples),
            s["seed"],
            s["batch_size"],
            start=self.start,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            accumulate=s["accumulate"],
        )
        return _OneLineErrorLoader(
            TrainSamples(self.samples, self.recipe.transform, s["seed"]),
            batch_sampler=plan,
            num_workers=s["workers"],
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=_ignore_stop_signals,
        )

    def run(self) -> TrainResult:
        s = self.settings
        max_iters = s["max_iters"]
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()
        if self.start >= max_iters:
            self._save(max_iters, done=True)  # the run had finished: make sure final is there
            return self._result(max_iters)
        self._prepare_log()
        task = None
        if self.progress is not None:
            task = self.progress.add_task(
                f"train {self.adapter.name}", total=max_iters, completed=self.start
            )
        was_training = self.module.training
        self.module.train()
        network: torch.nn.Module = _LossModule(self.module, self.recipe.loss)
        ddp = None
        if self.ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = network = DistributedDataParallel(network, device_ids=ids)
        batches = iter(self._loader())
        timing = [0.0, 0.0, time.perf_counter()]  # data seconds, step seconds, window start
        try:
            with (
                _determinism(s["deterministic"]),
                self._stop_on_signals(),
                model_threads(self.module, self.device),
            ):
                for iteration in range(self.start, max_iters):
                    loss, stop, data_time, step_time = self._step(iteration, network, ddp, batches)
                    timing[0] += data_time
                    timing[1] += step_time
                    self.window[0] += loss
                    self.window[1] += 1
                    done = iteration + 1
                    if done % s["log_every"] == 0 or done == max_iters:
                        self._log(done, timing, task)
                        timing = [0.0, 0.0, time.perf_counter()]
                    if task is not None:
                        self.progress.advance(task)
                    if done % s["checkpoint_every"] == 0 or done == max_iters or stop:
                        self._check_finite(done)
                        saving = time.perf_counter()
                        self._save(done, done=done == max_iters)
                        timing[2] += time.perf_counter() - saving  # it/s leaves saving out
                    if stop and done < max_iters:
                        raise KeyboardInterrupt(f"stopped after iteration {done}, checkpoint saved")
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            self.module.train(was_training)  # e.g. back to eval for evaluating the adapter
        return self._result(max_iters)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption, torchrun's
        shutdown) only ask to stop: the current iteration ends, every process saves a checkpoint
        there and the run raises KeyboardInterrupt; ``--resume`` continues exactly. A second
        Ctrl-C interrupts at once (launchers often send SIGTERM right after forwarding SIGINT:
        that still stops gracefully).

        Only when the caller asked for it (``stop_on_signals``: the command line does): a
        library call, a test say, keeps the process's own handlers, so a signal meant to end the
        process still ends it."""
        self.stop_requested = False
        ctrl_c = [0]  # SIGINTs received
        if not self.stop_on_signals or threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def request_stop(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                ctrl_c[0] += 1
                if ctrl_c[0] > 1:
                    raise KeyboardInterrupt
            self.stop_requested = True

        for sig in STOP_SIGNALS:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def lr_factor(self, iteration: int) -> float:
        """The schedule's LR multiplier of 0-based ``iteration`` under this run's settings."""
        s = self.settings
        return lr_factor(
            iteration, s["max_iters"], s["warmup_iters"], s["lr_schedule"], s["poly_power"]
        )

    def _step(
        self, iteration: int, network: torch.nn.Module, ddp: Any, batches: Iterator
    ) -> tuple[float, bool, float, float]:
        """One iteration: its loss (mean over micro-batches and ranks), whether any process was
        asked to stop, data and step seconds."""
        s = self.settings
        start = time.perf_counter()
        data_time = 0.0
        seed_everything(iteration_seed(s["seed"], iteration, self.ctx.rank))
        factor = self.lr_factor(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = s["lr"] * factor * group["lr_mult"]
        self.optimizer.zero_grad(set_to_none=True)
        accumulate = s["accumulate"]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro in range(accumulate):
            tick = time.perf_counter()
            images, labels = next(batches)
            data_time += time.perf_counter() - tick
            images = images.to(self.device, non_blocking=True).float()
            labels = labels.to(self.device, non_blocking=True).long()
            last = micro == accumulate - 1
            with nullcontext() if ddp is None or last else ddp.no_sync():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss = network(images, labels)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
                    raise UserError(f"the recipe's loss returned {shape}, expected a scalar tensor")
                (loss.float() / accumulate).backward()
            total += loss.detach().double() / accumulate
        clip = s["clip_norm"]
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip else math.inf)
        if not torch.isfinite(norm):  # a step would spread it to every parameter
            raise UserError(
                f"training diverged: the gradient norm is {norm.item()} in iteration "
                f"{iteration + 1}; {_DIVERGED_HINT}"
            )
        self.optimizer.step()
        # one reduction carries the loss and the stop requests of every process
        stop = torch.tensor(float(self.stop_requested), dtype=torch.float64, device=self.device)
        summed = self.ctx.all_reduce_sum(torch.stack([total, stop])).tolist()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start - data_time
        return summed[0] / self.ctx.world_size, summed[1] > 0, data_time, seconds

    def _check_finite(self, iteration: int) -> None:
        if not math.isfinite(self.window[0]):
            raise UserError(
                f"training diverged: the loss is not finite by iteration {iteration}; "
                f"{_DIVERGED_HINT}"
            )

    def _log(self, iteration: int, timing: list[float], task: Any) -> None:
        count = self.window[1]
        loss = self.window[0] / count
        self.window = [0.0, 0]
        self.last_loss = loss
        if not math.isfinite(loss):
            raise UserError(
                f"training diverged: the loss is {loss} at iteration {iteration}; {_DIVERGED_HINT}"
            )
        seconds = time.perf_counter() - timing[2]
        s = self.settings
        lr = s["lr"] * self.lr_factor(iteration - 1)
        line = {
            "iteration": iteration,
            "loss": loss,
            "lr": lr,
            "it_per_s": count / seconds if seconds > 0 else None,
            "data_seconds": timing[0] / count,
            "step_seconds": timing[1] / count,
        }
        if self.ctx.is_main:
            with open(self.out / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        if task is not None:
            speed = f"{line['it_per_s']:.2f} it/s" if line["it_per_s"] else ""
            self.progress.update(
                task,
                description=f"train {self.adapter.name} · loss {loss:.4f} · lr {lr:.2e} · {speed}",
            )

    def _result(self, iterations: int) -> TrainResult:
        return TrainResult(
            iterations=iterations,
            checkpoint=self.out / f"{FINAL}.safetensors",
            loss=self.last_loss,
            log=self.out / LOG_FILE,
        )


def train(
    adapter: Adapter,
    protocol: Protocol,
    data_root: Path,
    out: Path,
    settings: TrainSettings,
    resume: bool = False,
    progress: Any = None,
    stop_on_signals: bool = False,
) -> TrainResult:
    """Train the loaded ``adapter`` on ``protocol.train``, writing checkpoints and the log into
    ``out``; ``resume`` continues from the latest checkpoint there exactly as if never stopped.
    ``progress``: a rich Progress to show loss, LR, it/s and ETA on (rank 0 only).
    ``stop_on_signals``: SIGINT / SIGTERM finish the iteration, save a checkpoint and raise
    KeyboardInterrupt (for command-line programs; a library call leaves signals alone).
    A small model trains on one CPU thread (``ovrsisbench.threads``)."""
    return _Trainer(
        adapter, protocol, data_root, out, settings, resume, progress, stop_on_signals
    ).run()
