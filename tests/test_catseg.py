"""Cat-Seg as a whole: the tiny network's shapes and training rule, full-size parameter counts
against the original code's (spec param_counts.md 2.2-2.3), original-format checkpoints, the
sliding-window protocol against a hand-built version, and the adapter end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests_helpers import spec_keys

from ovrsisbench.errors import UserError
from ovrsisbench.models.catseg.checkpoint import KEYS, CheckpointMismatchError
from ovrsisbench.models.catseg.model import CONFIGS, CatSeg
from ovrsisbench.registry import create_adapter

# param_counts.md 2.3 (the original code, instantiated)
FULL = {
    "vit-b": {"clip": 149_620_737, "new": 4_668_641, "total": 154_289_378, "train": 25_115_873},
    "vit-l": {"clip": 427_944_193, "new": 5_782_753, "total": 433_726_946, "train": 70_270_177},
}
CLIP_QV = {"vit-b": 20_447_232, "vit-l": 64_487_424}  # 2.2: image + text q/v weights
CLASSES = [["road"], ["tree", "forest"], ["water"]]


def count(module: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters of ``module``."""
    parameters = list(module.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def unit_text(classes: int, dim: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(classes)
    return F.normalize(torch.randn(classes, dim, generator=generator), dim=1)


@pytest.fixture(scope="module")
def tiny() -> CatSeg:
    torch.manual_seed(0)
    return CatSeg(CONFIGS["tiny"]).eval()


@pytest.mark.parametrize(("size", "classes"), [((64, 64), 1), ((96, 64), 5), ((32, 160), 40)])
def test_tiny_output_shapes(tiny, size, classes):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, *size), unit_text(classes))
    assert logits.shape == (2, classes, 16, 16)  # 4x the 4x4 cost grid, whatever the input
    assert torch.isfinite(logits).all()
    # more classes than the tiny pad_len (32): the 8 weakest are set to -100
    assert int((logits == -100).flatten(2).all(-1).sum()) == 2 * max(classes - 32, 0)


def test_only_clip_qv_and_new_modules_train():
    torch.manual_seed(1)
    model = CatSeg(CONFIGS["tiny"])
    text = model.encode_text(torch.randint(1, 400, (3, 77)))  # the text tower is in the graph
    model(torch.randn(1, 3, 64, 64), text).sum().backward()
    for name, parameter in model.named_parameters():
        qv = name.endswith(("attn.q_proj_weight", "attn.v_proj_weight"))
        frozen = name.startswith("clip.") and not qv
        assert parameter.requires_grad is not frozen, name
        if frozen:
            assert parameter.grad is None, name
    grads = dict(model.named_parameters())
    for tower in ("clip.visual.transformer", "clip.transformer"):
        assert grads[f"{tower}.resblocks.0.attn.v_proj_weight"].grad is not None
    assert grads["aggregator.layers.0.attention.padding_tokens"].grad is not None
    assert grads["upsample1.weight"].grad is not None


@pytest.mark.parametrize("backbone", list(FULL))
def test_full_size_parameter_counts_match_the_original(backbone):
    model = CatSeg(CONFIGS[backbone], device="meta")
    counts = FULL[backbone]
    assert count(model.clip) == (counts["clip"], CLIP_QV[backbone])
    new = sum(count(m)[0] for m in (model.aggregator, model.upsample1, model.upsample2))
    assert new == counts["new"]
    assert count(model) == (counts["total"], counts["train"])


@pytest.mark.parametrize("backbone", list(FULL))
def test_adapters_info_reports_the_groups(cli, backbone):
    result = cli("adapters", "info", "catseg", "--backbone", backbone, "--json")
    assert result.code == 0, result.err
    info, counts = json.loads(result.out), FULL[backbone]
    assert info["groups"]["clip"] == {"total": counts["clip"], "trainable": CLIP_QV[backbone]}
    assert info["groups"]["head"] == {"total": counts["new"], "trainable": counts["new"]}
    assert (info["total"], info["trainable"]) == (counts["total"], counts["train"])


# -- original-format checkpoints ----------------------------------------------------------------
def _original(model: CatSeg) -> dict[str, torch.Tensor]:
    return {KEYS.to_original(key): value.clone() for key, value in model.state_dict().items()}


def test_original_checkpoint_round_trip(tiny):
    torch.manual_seed(5)
    other = CatSeg(CONFIGS["tiny"])
    assert KEYS.load(other, {"model": _original(tiny), "iteration": 7}) == []
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_a_missing_or_renamed_key_is_named(tiny):
    state = _original(tiny)
    gone = "sem_seg_head.predictor.transformer.layers.0.swin_block.block_2.attn_mask"
    missing = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(CheckpointMismatchError, match=f"missing keys: {gone}"):
        KEYS.load(CatSeg(CONFIGS["tiny"]), missing)
    renamed = dict(missing, **{gone.replace("attn_mask", "mask"): state[gone]})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: .*block_2\.mask"):
        KEYS.load(CatSeg(CONFIGS["tiny"]), renamed)


def test_a_synthesised_original_vitb_checkpoint_loads_with_no_missing_or_unexpected_key():
    """Every key of param_counts.md 2.4 (head, upsample1/2, attn_mask buffers) plus the CLIP
    keys of 1.9.3 (generated as RSKT-Seg's tests do), with their shapes, on the meta device."""
    model = CatSeg(CONFIGS["vit-b"], device="meta")
    prefix = "sem_seg_head.predictor.clip_model."
    state = {
        key: torch.empty(shape, device="meta")
        for key, shape in spec_keys("catseg_head_keys_vitb.txt").items()
    }
    for key, value in model.clip.state_dict().items():
        state[prefix + key] = torch.empty(value.shape, device="meta")
    assert KEYS.load(model, state) == []
    key = "sem_seg_head.predictor.transformer.layers.1.attention.MLP.2.bias"
    del state[key]
    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
        KEYS.load(model, state)


# -- the adapter ------------------------------------------------------------------------------
def _tiny_adapter(**options) -> object:
    adapter = create_adapter("catseg", backbone="tiny", **options)
    adapter.load(None, "cpu")
    adapter.set_vocabulary(CLASSES)
    return adapter


def test_adapter_predicts_sigmoid_scores_at_the_input_size_in_both_modes():
    for inference in ("slide", "whole"):
        scores = _tiny_adapter(inference=inference).predict(torch.rand(2, 3, 70, 50))
        assert scores.shape == (2, 3, 70, 50)
        assert ((scores >= 0) & (scores <= 1)).all()


def test_slide_protocol_is_the_official_one_built_by_hand():
    """Shortest edge 640 (PIL, 8 bit), 640x640, four 384 crops at stride 256 and the global
    384 view in one batch, CLIP statistics, logits resized to 384, sigmoid, fold / overlap
    count, mean with the global view, resized to the input; pooling 1 (eval.sh)."""
    import numpy as np
    from PIL import Image

    adapter = _tiny_adapter()
    pixels = np.random.default_rng(0).integers(0, 256, (50, 87, 3), dtype=np.uint8)
    mapped = np.array(Image.fromarray(pixels).resize((1114, 640), Image.BILINEAR))
    image = torch.from_numpy(mapped).permute(2, 0, 1)[None].float()
    square = F.interpolate(image, size=(640, 640), mode="bilinear", align_corners=False)
    crops = [square[..., r : r + 384, c : c + 384] for r in (0, 256) for c in (0, 256)]
    views = torch.cat([*crops, F.interpolate(image, size=(384, 384), mode="bilinear")])
    mean = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(1, 3, 1, 1)
    std = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(1, 3, 1, 1)
    adapter.network.set_pooling(1)
    with torch.no_grad():
        out = adapter.network((views - mean) / std, adapter.text)
    out = F.interpolate(out, size=(384, 384), mode="bilinear").sigmoid()
    total, hits = torch.zeros(1, 3, 640, 640), torch.zeros(1, 1, 640, 640)
    for (r, c), crop in zip([(0, 0), (0, 256), (256, 0), (256, 256)], out[:4], strict=True):
        total[..., r : r + 384, c : c + 384] += crop
        hits[..., r : r + 384, c : c + 384] += 1
    merged = (total / hits + F.interpolate(out[4:], size=(640, 640), mode="bilinear")) / 2
    expected = F.interpolate(merged, size=(50, 87), mode="bilinear")
    adapter.network.set_pooling(2)  # predict sets the evaluation pooling itself
    image01 = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(adapter.predict(image01), expected, rtol=0, atol=1e-5)
    assert adapter.describe()["pooling"] == [1, 1]


def test_training_pools_by_two_and_evaluation_by_eval_pooling():
    adapter = _tiny_adapter()
    recipe = adapter.training_recipe(CLASSES)
    assert recipe.defaults["max_iters"] == 80_000 and recipe.defaults["batch_size"] == 4
    assert {g["name"]: g["lr_mult"] for g in recipe.param_groups}["clip"] == 0.01
    adapter.predict(torch.rand(1, 3, 64, 64))
    layers = adapter.network.aggregator.layers
    assert {layer.attention.pooling_size for layer in layers} == {(1, 1)}
    images, labels = torch.rand(1, 3, 64, 64) * 255, torch.zeros(1, 64, 64, dtype=torch.long)
    assert torch.isfinite(recipe.loss(images, labels))
    assert {layer.attention.pooling_size for layer in layers} == {(2, 2)}
    with pytest.raises(UserError, match="eval_pooling must be a positive integer"):
        create_adapter("catseg", eval_pooling=0)


def test_adapter_refuses_real_backbones_without_weights_and_reads_the_backbone(tmp_path):
    with pytest.raises(UserError, match="needs a trained checkpoint"):
        create_adapter("catseg", backbone="vit-b").load(None, "cpu")
    path = tmp_path / "model_large.pth"
    class_embedding = "sem_seg_head.predictor.clip_model.visual.class_embedding"
    torch.save({"model": {class_embedding: torch.zeros(1024)}}, path)
    with pytest.raises(UserError, match="backbone=vit-l, but backbone=vit-b given"):
        create_adapter("catseg", backbone="vit-b").load(path, "cpu")
    bad = tmp_path / "other.pth"
    torch.save({"model": {"foo": torch.zeros(1)}}, bad)
    with pytest.raises(UserError, match="not a Cat-Seg-format checkpoint"):
        create_adapter("catseg").load(bad, "cpu")


def test_trained_tiny_checkpoint_loads_back_strictly(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save({"model": _original(tiny)}, path)
    adapter = create_adapter("catseg", backbone="tiny")
    adapter.load(path, "cpu")
    assert adapter.weights_sha256() is not None
    state = _original(tiny)
    del state["upsample2.bias"]
    torch.save(state, path)
    with pytest.raises(UserError, match="missing keys: upsample2.bias"):
        create_adapter("catseg", backbone="tiny").load(path, "cpu")


def test_pretrained_init_loads_an_open_clip_file(tmp_path):
    import open_clip

    from ovrsisbench.models.common.catseg_clip import TINY_CATSEG_CONFIG

    clip = open_clip.CLIP(**{k: v for k, v in TINY_CATSEG_CONFIG.items()})
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)  # fused in_proj_weight, as open_clip's files
    adapter = create_adapter("catseg", backbone="tiny", init="pretrained", clip_weights=str(path))
    adapter.load(None, "cpu")
    ours = adapter.network.clip.visual.transformer.resblocks[0].attn.q_proj_weight
    fused = clip.visual.transformer.resblocks[0].attn.in_proj_weight
    assert torch.equal(ours, fused[: fused.shape[1]])
    with pytest.raises(UserError, match="cannot load the pretrained CLIP"):
        create_adapter("catseg", backbone="tiny", init="pretrained").load(None, "cpu")


def test_run_and_train_with_the_tiny_backbone_on_synthetic_data(cli, synthetic_root, tmp_path):
    args = ["--protocol", "demo", "--data-root", synthetic_root, "--device", "cpu"]
    result = cli("run", "--model", "catseg", "--backbone", "tiny", *args, "--results", tmp_path)
    assert result.code == 0, result.err
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert record["options"]["inference"] == "slide"
    assert record["timing"]["inference"]["slide"]["stride"] == 256
    out = tmp_path / "train"
    done = cli(
        "train", "--model", "catseg", "--backbone", "tiny", "-o", "train_size=64",
        "--max-iters", "2", "--batch-size", "2", "--workers", "0", "--out", out, *args,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads((out / "final.json").read_text())["iteration"] == 2
    trained = create_adapter("catseg", backbone="tiny")
    trained.load(out / "final.safetensors", "cpu")  # our names load through the original path
