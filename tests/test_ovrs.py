"""OVRS (the ``*_ours.py`` method): rotation-aggregated costs, guided upsampling, parameter
counts (spec baselines.md 3: aggregator 2,331,669 for ViT-B), the training rule, checkpoints in
Cat-Seg's names, and the adapter end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_catseg import CLASSES, CLIP_QV, FULL, count, unit_text
from tests_helpers import batched_and_sequential

from ovrsisbench.models.catseg.checkpoint import KEYS
from ovrsisbench.models.catseg.model import CONFIGS, CatSeg
from ovrsisbench.models.common.catseg_head import rotated_cosine_cost
from ovrsisbench.models.ovrs.model import OVRS, GuidedUp
from ovrsisbench.registry import create_adapter

AGGREGATOR_VITB = 2_331_669  # Cat-Seg's 2,308,961 + 18,816 (conv1 4 -> 128) + 3,892 (cconv/sconv)


@pytest.fixture(scope="module")
def tiny() -> OVRS:
    torch.manual_seed(0)
    return OVRS(CONFIGS["tiny"]).eval()


def test_tiny_shapes_and_batched_rotations_equal_four_passes(tiny):
    images, text = torch.randn(2, 3, 64, 96), unit_text(4)
    batched, sequential = batched_and_sequential(tiny, images, text)
    assert batched.shape == (2, 4, 16, 16)
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-5)


def test_the_cost_stacks_the_four_rotations_turned_back(tiny):
    """conv1 sees the four rotated passes' costs (rotation-major), each turned back, and the
    Swin guidance is the unrotated pass."""
    image, text = torch.randn(1, 3, 64, 64), unit_text(3)[None, :, None, :]
    with torch.no_grad():
        cost_features, appearance, _ = tiny.clip_features(image)
        cost = tiny.aggregator.correlation(cost_features, text)
        turned = torch.rot90(image, 2, dims=(2, 3))
        second = tiny.clip_features(turned)[0][0]
    assert cost.shape == (1, 4, 3, 4, 4) and tiny.aggregator.conv1.in_channels == 4
    assert torch.equal(appearance, cost_features[0])
    torch.testing.assert_close(cost, rotated_cosine_cost(cost_features, text))
    by_hand = torch.einsum(
        "bchw,btpc->bpthw", F.normalize(torch.rot90(second, 2, dims=(2, 3)), dim=1), text
    )
    torch.testing.assert_close(cost[:, 2:3], by_hand, rtol=0, atol=1e-5)


def test_guided_upsampling_reweights_the_guidance_by_hand():
    torch.manual_seed(1)
    up = GuidedUp(128, 64, 32)
    x, guidance = torch.randn(6, 128, 3, 3), torch.randn(2, 32, 6, 6)  # B = 2, T = 3
    upsampled = up.up(x)
    mean = upsampled.view(2, 3, 96, 6, 6).mean(1)
    channel = up.cconv(mean.mean((2, 3), keepdim=True))
    spatial = up.sconv(mean.mean(1, keepdim=True))
    weighted = channel * guidance + spatial * guidance + guidance
    expected = up.conv(torch.cat([upsampled, weighted.repeat_interleave(3, 0)], 1))
    torch.testing.assert_close(up(x, guidance), expected)


def test_full_size_counts_and_keys():
    model = OVRS(CONFIGS["vit-b"], device="meta")
    assert count(model.aggregator) == (AGGREGATOR_VITB, AGGREGATOR_VITB)
    assert count(model.clip) == (FULL["vit-b"]["clip"], CLIP_QV["vit-b"])
    extra = AGGREGATOR_VITB - 2_308_961
    assert count(model) == (FULL["vit-b"]["total"] + extra, FULL["vit-b"]["train"] + extra)
    catseg = set(CatSeg(CONFIGS["vit-b"], device="meta").state_dict())
    added = {key for key in model.state_dict() if key not in catseg}
    assert added == {
        f"aggregator.decoder{i}.{conv}.{p}"
        for i in (1, 2)
        for conv in ("cconv", "sconv")
        for p in ("weight", "bias")
    }
    assert tuple(model.state_dict()["aggregator.conv1.weight"].shape) == (128, 4, 7, 7)


def test_only_clip_qv_and_new_modules_train():
    torch.manual_seed(2)
    model = OVRS(CONFIGS["tiny"])
    model(
        torch.randn(1, 3, 64, 64), model.encode_text(torch.randint(1, 400, (2, 77)))
    ).sum().backward()
    for name, parameter in model.named_parameters():
        frozen = name.startswith("clip.") and not name.endswith(
            ("attn.q_proj_weight", "attn.v_proj_weight")
        )
        assert parameter.requires_grad is not frozen, name
        if frozen:
            assert parameter.grad is None, name
    assert model.aggregator.decoder1.cconv.weight.grad is not None


def test_checkpoint_round_trip_in_catseg_names(tiny):
    state = {KEYS.to_original(k): v.clone() for k, v in tiny.state_dict().items()}
    assert "sem_seg_head.predictor.transformer.decoder1.cconv.weight" in state
    torch.manual_seed(3)
    other = OVRS(CONFIGS["tiny"])
    KEYS.load(other, state)
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_adapter_info_and_run_on_synthetic_data(cli, synthetic_root, tmp_path):
    info = cli("adapters", "info", "ovrs", "--backbone", "vit-b", "--json")
    assert info.code == 0, info.err
    assert json.loads(info.out)["groups"]["head"]["total"] == AGGREGATOR_VITB + 2_359_680
    adapter = create_adapter("ovrs", backbone="tiny", rotations="sequential")
    adapter.load(None, "cpu")
    adapter.set_vocabulary(CLASSES)
    assert adapter.predict(torch.rand(1, 3, 40, 30)).shape == (1, 3, 40, 30)
    assert adapter.describe()["rotations"] == "sequential"
    args = ["--protocol", "demo", "--data-root", synthetic_root, "--results", tmp_path]
    result = cli("run", "--model", "ovrs", "--backbone", "tiny", "--device", "cpu", *args)
    assert result.code == 0, result.err
    assert len(sorted((tmp_path / "records").rglob("*.json"))) == 2


def test_two_tiny_training_steps_and_the_trained_file_loads_back(cli, synthetic_root, tmp_path):
    out = tmp_path / "train"
    done = cli(
        "train", "--model", "ovrs", "--backbone", "tiny", "--protocol", "demo",
        "--data-root", synthetic_root, "--device", "cpu", "-o", "train_size=64",
        "--max-iters", "2", "--batch-size", "2", "--workers", "0", "--out", out,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads((out / "final.json").read_text())["iteration"] == 2
    trained = create_adapter("ovrs", backbone="tiny")
    trained.load(out / "final.safetensors", "cpu")  # strict, in the original key names
