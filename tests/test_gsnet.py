"""GSNet: the tiny network's shapes and training rule, full-size parameter counts against the
original code's (spec param_counts.md 3.2-3.3), original-format checkpoints (3.4), and the
adapter end to end (run, train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovrsisbench.errors import UserError
from ovrsisbench.models.gsnet.checkpoint import (
    CheckpointMismatchError,
    load_original,
    to_original,
)
from ovrsisbench.models.gsnet.model import CONFIGS, TOP_LEVEL_CONV_NAMES, GSNet
from ovrsisbench.registry import create_adapter

DATA = Path(__file__).parent / "data"
ADAPTER = "gsnet"

# param_counts.md 3.2 / 3.3 (the original code, instantiated): ViT-B/16, the only config
CLIP, DINO, CLIP_QV = 149_620_737, 85_807_872, 20_447_232
NEW, TOTAL, TRAINABLE = 8_559_633, 243_988_242, 29_006_865
MODULES = {  # our name -> original count (prefix sem_seg_head.predictor.transformer. = decoder.)
    "decoder": 4_036_369,
    "decoder.layers": 1_354_240,
    "decoder.layers.0": 677_120,
    "decoder.layers.1": 677_120,
    "decoder.layers.0.swin_block": 462_336,
    "decoder.layers.0.attention": 214_784,
    "decoder.conv1": 6_400,
    "decoder.conv2": 6_400,
    "decoder.fusion_corr": 1_605_760,
    "decoder.guidance_projection": 589_952,
    "decoder.text_guidance_projection": 65_664,
    "decoder.CLIP_decoder_guidance_projection": 92_208,
    "decoder.CLIP_decoder_guidance_projection.0": 73_760,
    "decoder.CLIP_decoder_guidance_projection.1": 18_448,
    "decoder.DINO_decoder_guidance_projection": 92_208,
    "decoder.DINO_decoder_guidance_projection.0": 73_760,
    "decoder.DINO_decoder_guidance_projection.1": 18_448,
    "decoder.Fusiondecoder1": 178_528,
    "decoder.Fusiondecoder1.up": 49_248,
    "decoder.Fusiondecoder1.conv": 129_280,
    "decoder.Fusiondecoder2": 44_720,
    "decoder.Fusiondecoder2.up": 12_336,
    "decoder.Fusiondecoder2.conv": 32_384,
    "decoder.head": 289,
    "upsample1": 786_688,
    "upsample2": 1_572_992,
    "dino_decod_proj1": 196_864,
    "dino_decod_proj2": 393_344,
    "dino_down_sample": 1_573_376,
}


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters of ``module``."""
    parameters = list(module.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def _text(count: int, dim: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    return F.normalize(torch.randn(count, dim, generator=generator), dim=1)


@pytest.fixture(scope="module")
def tiny() -> GSNet:
    torch.manual_seed(0)
    return GSNet(CONFIGS["tiny"]).eval()


@pytest.fixture(scope="module")
def vitb() -> GSNet:
    return GSNet(CONFIGS["vit-b"], device="meta")


# -- the network ------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "classes"), [((64, 64), 1), ((96, 64), 5), ((32, 160), 17)])
def test_tiny_output_shapes(tiny, size, classes):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, *size), _text(classes))
    assert logits.shape == (2, classes, 16, 16)  # 4x the 4x4 cost grid, whatever the input
    assert torch.isfinite(logits).all()


def test_only_clip_qv_and_new_modules_train_and_dino_gets_no_gradient():
    torch.manual_seed(1)
    model = GSNet(CONFIGS["tiny"])
    text = model.encode_text(torch.randint(1, 400, (3, 77)))  # the text tower is in the graph
    model(torch.randn(2, 3, 64, 64), text).sum().backward()
    for name, parameter in model.named_parameters():
        in_clip = name.startswith("clip.")
        qv = name.endswith(("attn.q_proj_weight", "attn.v_proj_weight"))
        frozen = name.startswith("dino.") or (in_clip and not qv)
        assert parameter.requires_grad is not frozen, name
        if frozen:
            assert parameter.grad is None, name
    for tower in ("clip.visual.transformer.resblocks.0.", "clip.transformer.resblocks.0."):
        for weight in ("attn.q_proj_weight", "attn.v_proj_weight"):
            assert model.get_parameter(tower + weight).grad is not None, tower + weight
    new = [p for n, p in model.named_parameters() if not n.startswith(("clip.", "dino."))]
    assert all(p.grad is not None for p in new)


def test_dino_branch_reads_blocks_3_7_11_and_feeds_the_decoder(tiny):
    """The DINO map that gives the DINO cost comes from the last block; changing it changes the
    logits (the DINO cost is used), and the CLIP-only part does not depend on DINO weights."""
    assert CONFIGS["vit-b"].dino_indices == (3, 7, 11)
    assert CONFIGS["vit-b"].clip_hooks == (3, 7)
    images, text = torch.randn(1, 3, 64, 64), _text(3)
    with torch.no_grad():
        before = tiny(images, text)
        saved = tiny.dino_down_sample.weight.clone()
        tiny.dino_down_sample.weight.mul_(-1)
        try:
            after = tiny(images, text)
        finally:
            tiny.dino_down_sample.weight.copy_(saved)
    assert not torch.allclose(before, after)


def test_full_size_parameter_counts_match_the_original(vitb):
    assert count_parameters(vitb.clip) == (CLIP, CLIP_QV)
    assert count_parameters(vitb.dino) == (DINO, 0)
    for name, expected in MODULES.items():
        assert count_parameters(vitb.get_submodule(name)) == (expected, expected), name
    new = [vitb.decoder, *(getattr(vitb, name) for name in TOP_LEVEL_CONV_NAMES)]
    assert sum(count_parameters(m)[0] for m in new) == NEW
    assert count_parameters(vitb) == (TOTAL, TRAINABLE)


def test_adapters_info_reports_the_groups(cli):
    result = cli("adapters", "info", ADAPTER, "--backbone", "vit-b", "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["groups"]["clip"] == {"total": CLIP, "trainable": CLIP_QV}
    assert info["groups"]["dino"] == {"total": DINO, "trainable": 0}
    assert info["groups"]["head"] == {"total": NEW, "trainable": NEW}
    assert (info["total"], info["trainable"]) == (TOTAL, TRAINABLE)


# -- original checkpoints -----------------------------------------------------------------------
def _spec_keys() -> dict[str, tuple[int, ...]]:
    """param_counts.md 3.4: the new part's original keys and shapes."""
    keys = {}
    for line in (DATA / "gsnet_keys_vitb.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()[:2]
            keys[key] = tuple(int(v) for v in shape.strip("[]").split(","))
    return keys


def _original_shapes(model: GSNet, prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {
        to_original(key): tuple(value.shape)
        for key, value in model.state_dict().items()
        if key.startswith(prefixes)
    }


def test_a_synthesised_original_vitb_checkpoint_loads_with_no_missing_or_unexpected_key(vitb):
    """The new part's keys as param_counts.md 3.4 lists them, CLIP and DINO keys in the original
    names (``sem_seg_head.predictor.clip_model.*`` split q/k/v, ``dino_model.*``); meta tensors,
    so nothing is allocated."""
    spec = _spec_keys()
    encoders = _original_shapes(vitb, ("clip.", "dino."))
    assert all(
        k.startswith(("sem_seg_head.predictor.clip_model.", "dino_model.")) for k in encoders
    )
    assert (
        "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.11.attn.q_proj_weight"
        in encoders
    )
    new = _original_shapes(vitb, ("decoder.", *TOP_LEVEL_CONV_NAMES))
    assert new == spec  # exactly the original keys and shapes, buffers (attn_mask) included
    state = {k: torch.empty(s, device="meta") for k, s in {**spec, **encoders}.items()}
    target = GSNet(CONFIGS["vit-b"], device="meta")
    assert load_original(target, {"model": state}) == []
    gone = "sem_seg_head.predictor.transformer.Fusiondecoder2.conv.double_conv.4.bias"
    with pytest.raises(CheckpointMismatchError, match=f"missing keys: {gone}"):
        load_original(target, {k: v for k, v in state.items() if k != gone})
    extra = dict(state, **{"sem_seg_head.predictor.transformer.hed.weight": state[gone]})
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected keys: .*transformer\.hed\.weight"
    ):
        load_original(target, extra)


def test_tiny_original_checkpoint_round_trip(tiny):
    state = {to_original(key): value.clone() for key, value in tiny.state_dict().items()}
    torch.manual_seed(5)
    other = GSNet(CONFIGS["tiny"])
    assert load_original(other, {"model": state, "iteration": 29999}) == []
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


# -- the adapter ------------------------------------------------------------------------------
@pytest.mark.parametrize("inference", ["slide", "whole"])
def test_adapter_predicts_sigmoid_scores_at_the_input_size(inference):
    adapter = create_adapter(ADAPTER, backbone="tiny", inference=inference)
    adapter.load(None, "cpu")
    adapter.set_vocabulary([["road"], ["tree", "forest"], ["water"]])
    scores = adapter.predict(torch.rand(2, 3, 70, 50))
    assert scores.shape == (2, 3, 70, 50)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_adapter_options_and_provenance():
    cls = type(create_adapter(ADAPTER, backbone="tiny"))
    assert cls.name == "gsnet"
    assert cls.source_url == "https://github.com/yecy749/GSNet"
    with pytest.raises(UserError, match="no ViT-L configuration"):
        create_adapter(ADAPTER, backbone="vit-l")
    with pytest.raises(UserError, match="needs a trained checkpoint"):
        create_adapter(ADAPTER).load(None, "cpu")


def test_a_checkpoint_without_dino_needs_rsib_and_names_the_file(tmp_path, tiny):
    """A checkpoint holding CLIP and head but no ``dino_model.*`` keys: the DINO weights come
    from RSIB.pth; without it, a clear error names the missing file and where to get it."""
    state = {to_original(k): v for k, v in tiny.state_dict().items() if not k.startswith("dino.")}
    path = tmp_path / "model_0029999.pth"
    torch.save({"model": state}, path)
    adapter = create_adapter(ADAPTER, backbone="tiny", weights_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"RSIB\.pth is missing; get it from .*Google Drive"):
        adapter.load(path, "cpu")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in tiny.dino.state_dict().items()}},
               tmp_path / "RSIB.pth")  # fmt: skip
    adapter.load(path, "cpu")
    for key, value in tiny.state_dict().items():
        assert torch.equal(adapter.network.state_dict()[key], value), key
    assert adapter.describe()["dino_weights"] == str(tmp_path / "RSIB.pth")
    start = create_adapter(ADAPTER, init="pretrained", weights_dir=str(tmp_path / "none"))
    with pytest.raises(UserError, match=r"init=pretrained needs the DINO .*RSIB\.pth is missing"):
        start.load(None, "cpu")


def test_run_with_the_tiny_backbone_on_synthetic_data(cli, synthetic_root, tmp_path):
    args = ["--protocol", "demo", "--data-root", synthetic_root, "--results", tmp_path]
    # whole-image inference: the sliding window at 640 px has its own tests and takes 5x longer
    args += ["-o", "inference=whole"]
    result = cli("run", "--model", ADAPTER, "--backbone", "tiny", "--device", "cpu", *args)
    assert result.code == 0, result.err
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert record["options"]["backbone"] == "tiny"
    assert record["params"]["trainable"] < record["params"]["total"]
    assert record["timing"]["inference"]["scores"] == "sigmoid"


def test_two_tiny_training_steps(cli, synthetic_root, tmp_path):
    out = tmp_path / "train"
    done = cli(
        "train", "--model", ADAPTER, "--backbone", "tiny", "--protocol", "demo",
        "-o", "train_size=64", "--max-iters", "2", "--batch-size", "2", "--workers", "0",
        "--data-root", synthetic_root, "--results", tmp_path / "results", "--out", out,
        "--device", "cpu",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads((out / "final.json").read_text())["iteration"] == 2
    again = create_adapter(ADAPTER, backbone="tiny")
    again.load(out / "final.safetensors", "cpu")  # our names, DINO included: strict
    assert again.weights_sha256() is not None


def test_slide_protocol_is_the_official_window_average():
    """640x640 input (no test resize): four 384 windows at stride 256 and the global view, each
    through the network, logits resized to 384, sigmoid; per pixel the mean over the windows
    covering it, averaged with the global view (spec baselines.md 1.7), built by hand; and the
    class aggregation pools 1x1 at evaluation."""
    adapter = create_adapter(ADAPTER, backbone="tiny")
    adapter.load(None, "cpu")
    adapter.set_vocabulary([["road"], ["tree"]])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (1, 3, 640, 640), generator=generator).float()
    scores = adapter.predict(pixels / 255)
    pools = {m.pooling_size for m in adapter.network.modules() if hasattr(m, "pooling_size")}
    assert pools == {(1, 1)}
    mean = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(1, 3, 1, 1)
    std = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(1, 3, 1, 1)
    x = (pixels - mean) / std

    def probabilities(view: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = adapter.network(view, adapter.text)
        return F.interpolate(logits, size=(384, 384), mode="bilinear").sigmoid()

    total, count = torch.zeros(1, 2, 640, 640), torch.zeros(1, 1, 640, 640)
    for top in (0, 256):
        for left in (0, 256):
            total[..., top : top + 384, left : left + 384] += probabilities(
                x[..., top : top + 384, left : left + 384]
            )
            count[..., top : top + 384, left : left + 384] += 1
    global_view = probabilities(F.interpolate(x, size=(384, 384), mode="bilinear"))
    expected = (total / count + F.interpolate(global_view, size=(640, 640), mode="bilinear")) / 2
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


def test_training_recipe_pools_2x2_and_slows_clip():
    adapter = create_adapter(ADAPTER, backbone="tiny")
    adapter.load(None, "cpu")
    recipe = adapter.training_recipe([["road"], ["tree"]])
    pools = {m.pooling_size for m in recipe.module.modules() if hasattr(m, "pooling_size")}
    assert pools == {(2, 2)}  # the training pooling; predict switches to eval_pooling
    groups = {group["name"]: group for group in recipe.param_groups}
    assert groups["clip"]["lr_mult"] == 0.01 and groups["new"]["lr_mult"] == 1.0
    adapter.set_vocabulary([["road"], ["tree"]])
    adapter.predict(torch.rand(1, 3, 32, 32))  # evaluation pools 1x1 ...
    images, labels = torch.rand(2, 3, 64, 64) * 255, torch.randint(0, 2, (2, 64, 64))
    assert torch.isfinite(recipe.loss(images, labels))  # ... training 2x2 again
    assert {m.pooling_size for m in recipe.module.modules() if hasattr(m, "pooling_size")} == {
        (2, 2)
    }
    trained = {id(p) for group in recipe.param_groups for p in group["params"]}
    assert not any(id(p) in trained for p in recipe.module.dino.parameters())
    assert recipe.defaults["max_iters"] == 30_000 and recipe.defaults["clip_norm"] == 0.01
