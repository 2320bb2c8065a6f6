"""Evaluation under torchrun (gloo, CPU): sharding, exact pooled counts, rank-0-only output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from launch import LAUNCH_VARIABLES, free_port, launch_by_hand, torchrun

from ovrsisbench.data.converters.synthetic import generate_synthetic_benchmark
from ovrsisbench.distributed import Context, cleanup, context
from ovrsisbench.errors import UserError


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory) -> Path:
    """Synthetic data with 5 images: synthetic-source's val split holds 1 (process 1 of 2 gets
    none), synthetic-target's all split 5. Images are 56 x 56 but every third is 42 x 70: the
    only one, img0002, which FailingAdapter refuses (> 60 px wide), cuts the batches (of 2) as
    [0, 1] [2] [3, 4]: process 0 gets images 0, 1, 3, 4 and process 1 gets img0002 alone."""
    root = tmp_path_factory.mktemp("odd-data")
    generate_synthetic_benchmark(root, num_images=5, size=56)
    for name, split, count in (("synthetic-source", "val", 1), ("synthetic-target", "all", 5)):
        meta = json.loads((root / name / "meta.json").read_text())
        assert meta["splits"][split] == count
    return root


def run_arguments(model: str, data_root: Path, results: Path) -> list[str]:
    return [
        "run",
        "--model",
        f"toy_adapters:{model}",
        "--protocol",
        "demo",
        "--data-root",
        str(data_root),
        "--results",
        str(results),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--save-predictions",
        "3",
    ]


def saved_maps(results: Path) -> dict[str, bytes]:
    return {
        path.relative_to(results).as_posix(): path.read_bytes()
        for path in sorted((results / "records").rglob("*.png"))
    }


def records(results: Path) -> dict[str, dict]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((results / "records").rglob("*.json"))
    }


# -- Context ----------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("count", [0, 1, 2, 5, 6, 23])
def test_shards_partition_the_indices(count, world_size):
    shards = [
        Context(rank=rank, world_size=world_size, local_rank=rank).shard(count)
        for rank in range(world_size)
    ]
    assert sorted(i for shard in shards for i in shard) == list(range(count))  # no dups/padding
    assert {len(shard) for shard in shards} <= {count // world_size, -(-count // world_size)}
    assert list(shards[0]) == list(range(0, count, world_size))


def test_shard_rejects_a_negative_count():
    with pytest.raises(ValueError):
        Context().shard(-1)


def test_single_process_context_needs_no_process_group(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ctx = context("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (0, 1, 0, True)
    assert ctx.device == torch.device("cpu")
    assert not dist.is_initialized()
    ctx.barrier()
    tensor = torch.tensor([3, 4], dtype=torch.int64)
    assert ctx.all_reduce_sum(tensor) is tensor and tensor.tolist() == [3, 4]
    assert ctx.all_gather_object("x") == ["x"]
    assert list(ctx.shard(3)) == [0, 1, 2]
    cleanup()  # nothing to destroy: no error
    with pytest.raises(UserError, match="unknown device"):
        context("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            context("cuda")


def test_context_under_a_launcher_initialises_gloo_once(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    assert not dist.is_initialized()
    try:
        ctx = context("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert (ctx.rank, ctx.world_size, ctx.device) == (0, 1, torch.device("cpu"))
        assert context("cpu") == ctx  # a second call reuses the process group
    finally:
        cleanup()
    assert not dist.is_initialized()


# -- torchrun ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["ColourAdapter", "BatchMixingAdapter"])
def test_torchrun_evaluation_equals_a_single_process_run(
    cli, monkeypatch, toy_adapters, odd_root, tmp_path, model
):
    """Also for an adapter whose scores depend on the batch: every image is predicted in the
    batch it has in a single process; the saved maps (written by both processes) too."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    result = cli(*run_arguments(model, odd_root, single))
    assert result.code == 0, result.err

    launched = torchrun(run_arguments(model, odd_root, parallel))
    assert launched.returncode == 0, launched.stderr
    # rank 0 alone prints the table and writes the leaderboards
    assert launched.stdout.count("on protocol demo") == 1
    assert launched.stdout.count("leaderboards: ") == 1
    assert "distributed evaluation over 2 processes" in launched.stderr

    expected, got = records(single), records(parallel)
    assert sorted(got) == sorted(expected) and len(got) == 2  # the same keys, hence file names
    assert [record["num_images"] for record in got.values()] == [1, 5]
    for name, record in got.items():
        assert record["confusion"] == expected[name]["confusion"]
        assert record["metrics"] == expected[name]["metrics"]
        assert record["per_class"] == expected[name]["per_class"]
        for field in ("created", "timing"):  # wall-clock facts differ
            record.pop(field), expected[name].pop(field)
        assert record == expected[name]
    assert record["predictions"]["files"]  # listed equally, hashes included
    maps = saved_maps(parallel)
    assert maps == saved_maps(single) and len(maps) == 1 + 3
    assert (parallel / "leaderboard.md").read_text() == (single / "leaderboard.md").read_text()


def test_a_failure_on_one_process_fails_the_dataset_on_all(odd_root, tmp_path):
    """FailingAdapter breaks on process 1's share of synthetic-target only: no process hangs,
    both exit 1, rank 0 alone reports it; the other dataset's record is written, and a rerun
    skips it on every process (rank 0's decision)."""
    arguments = run_arguments("FailingAdapter", odd_root, tmp_path)
    first = launch_by_hand(arguments)
    assert [p.returncode for p in first] == [1, 1], first[0].stderr + first[1].stderr
    main, other = first
    assert "synthetic-source │ done" in main.stdout
    assert "synthetic-target │ failed" in main.stdout
    assert "process 1: RuntimeError: simulated adapter failure" in main.stderr
    assert other.stdout == "" and "simulated" not in other.stderr
    written = records(tmp_path)
    assert len(written) == 1 and next(iter(written)).startswith("synthetic-source--")
    created = {name: record["created"] for name, record in written.items()}

    again = launch_by_hand(arguments)
    assert [p.returncode for p in again] == [1, 1]
    assert "synthetic-source │ skipped" in again[0].stdout
    assert {name: r["created"] for name, r in records(tmp_path).items()} == created


def test_batch_plan_groups_consecutive_images_of_one_size():
    from ovrsisbench.evaluation import batch_plan

    sizes = [(4, 4)] * 5 + [(4, 6)] + [(4, 4)] * 2
    assert [list(batch) for batch in batch_plan(sizes, 2)] == [[0, 1], [2, 3], [4], [5], [6, 7]]
    resumed = batch_plan(sizes[3:], 2, first=3)  # the images left after 3 were counted
    assert [list(batch) for batch in resumed] == [[3, 4], [5], [6, 7]]
    assert [list(batch) for batch in batch_plan(sizes, 1)] == [[i] for i in range(8)]
    assert batch_plan([], 3) == []
