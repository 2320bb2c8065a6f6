"""SED: the tiny network's geometry, dense ConvNeXt features and per-template text, what trains,
full-size parameter counts (derived from the original code, spec baselines.md 6 and 10),
original-format checkpoints (keys in tests/data/sed_keys_*.txt), early rejection, and the
adapter end to end (protocol, run, train)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from tests_helpers import spec_keys
from torch import nn

from ovrsisbench.errors import UserError
from ovrsisbench.models.common.losses import bce_one_hot_loss
from ovrsisbench.models.common.text import IMAGENET_TEMPLATES, get_tokenizer
from ovrsisbench.models.sed.checkpoint import KEYS, CheckpointMismatchError
from ovrsisbench.models.sed.clip import dense_features
from ovrsisbench.models.sed.head import any_pixel_topk
from ovrsisbench.models.sed.model import CONFIGS, SED
from ovrsisbench.registry import create_adapter

CLASSES = [["road"], ["tree", "forest"], ["water"]]
# Decoder counts (derived): analytic over sed/modeling/transformer/model.py with the released
# configs; they add up to the spec's 1,376,396 (B) and 1,473,164 (L). Only the skip-guidance
# convs differ (inputs res4/res3/res2: 512/256/128 vs 768/384/192).
DECODER_MODULES = {
    "conv1": 501_888,  # Conv 80 -> 128, 7x7
    "decoder_corr_guidance_projection": 12_856,  # ConvT 80->32, 32->16, 16->8
    "decoder1": 502_880,  # up 49,248 + DoubleConv 129,280 + cnext 142,592 + attention 181,760
    "decoder2": 129_072,
    "decoder3": 33_944,
    "head0": 1_153,
    "head1": 577,
    "head2": 289,
    "head": 145,
}
GUIDANCE_PROJECTION = {"convnext-b": 193_592, "convnext-l": 290_360}
DECODER = {"convnext-b": 1_376_396, "convnext-l": 1_473_164}  # spec baselines.md 6
# open_clip convnext_base_w_320 / convnext_large_d_320: the whole CLIP and its image tower
CLIP = {"convnext-b": (179_385_345, 88_221_824), "convnext-l": (351_772_609, 199_770_816)}
KEY_FILES = {"convnext-b": "sed_keys_convnextb.txt", "convnext-l": "sed_keys_convnextl.txt"}


def count(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters of ``module``."""
    parameters = list(module.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


@pytest.fixture(scope="module")
def tiny() -> SED:
    torch.manual_seed(0)
    return SED(CONFIGS["tiny"]).eval()


@pytest.fixture(scope="module")
def text(tiny) -> torch.Tensor:
    return tiny.embed_classes(CLASSES)


# -- the network -------------------------------------------------------------------------------
def test_tiny_geometry_follows_the_squashed_size(tiny, text):
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, 70, 90), text)
    assert out.logits.shape == (2, 3, 64, 64)  # 256 px squash, stride 4
    assert [a.shape[-1] for a in out.aux] == [8, 16, 32]  # head0 / head1 / head2
    released = SED(dataclasses.replace(CONFIGS["tiny"], clip_size=768)).eval()
    with torch.no_grad():
        out = released(torch.randn(1, 3, 100, 60), text[:1])
    assert out.logits.shape == (1, 1, 192, 192)  # SED's 768 squash -> 192 x 192
    assert [tuple(a.shape) for a in out.aux] == [(1, 1, s, s) for s in (24, 48, 96)]


def test_dense_feature_is_the_clip_head_on_every_pixel(tiny):
    """On a 32 px image (one stride-32 pixel) the dense map is CLIP's own image embedding; on a
    larger one every pixel is res5's channels through the trunk head's LayerNorm and the
    projection (the original's per-pixel ``visual_prediction_forward_convnext``)."""
    visual = tiny.clip.visual
    with torch.no_grad():
        images = torch.randn(2, 3, 32, 32)
        _, one_pixel = dense_features(visual, images)
        torch.testing.assert_close(one_pixel.flatten(1), tiny.clip.encode_image(images))
        stages, dense = dense_features(visual, torch.randn(1, 3, 256, 256))
        res5, norm = stages[3].permute(0, 2, 3, 1), visual.trunk.head.norm
        normed = F.layer_norm(res5, (res5.shape[-1],), norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(dense.permute(0, 2, 3, 1), visual.head(normed))
    assert [tuple(s.shape[1:]) for s in stages] == [
        (16, 64, 64),
        (32, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
    ]


def test_text_keeps_80_templates_and_averages_synonyms_per_template(tiny, text):
    """sed_predictor.py ``class_embeddings``: prompts template-major over the synonyms, each
    L2-normalised, mean over the synonyms per template, normalised again."""
    assert text.shape == (3, 80, 32)
    tokenizer = get_tokenizer(CONFIGS["tiny"].clip_arch)
    prompts = [t.format(name) for t in IMAGENET_TEMPLATES for name in ("tree", "forest")]
    with torch.no_grad():
        embedded = F.normalize(tiny.clip.encode_text(tokenizer(prompts)), dim=-1)
    expected = F.normalize(embedded.view(80, 2, -1).mean(dim=1), dim=-1)
    torch.testing.assert_close(text[1], expected)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3, 80))


def test_res2_to_res4_reach_the_decoder_detached(tiny):
    dense, guidance = tiny.encode_image(torch.randn(1, 3, 64, 64))
    assert dense.requires_grad
    assert [g.requires_grad for g in guidance] == [False, False, False]
    assert [g.shape[1] for g in guidance] == [64, 32, 16]  # res4, res3, res2


def test_a_training_step_moves_the_image_tower_and_the_decoder_not_the_text_tower():
    adapter = create_adapter("sed", backbone="tiny", seed=3)
    adapter.load(None, "cpu")
    recipe = adapter.training_recipe(CLASSES)
    network = recipe.module
    groups = {g["name"]: g for g in recipe.param_groups}
    assert groups["clip"]["lr_mult"] == groups["clip_no_decay"]["lr_mult"] == 0.01
    assert groups["new"]["lr_mult"] == 1.0
    decayed = {id(p) for p in groups["new"]["params"]}
    decoder = network.transformer
    # SED's own LayerNorm is no nn.LayerNorm: detectron2 (and we) decay it; GroupNorm not
    assert id(decoder.decoder1.cnext.norm.weight) in decayed
    assert id(decoder.decoder1.conv.double_conv[1].weight) not in decayed
    assert id(network.clip.visual.trunk.stem[1].weight) in {
        id(p) for p in groups["clip_no_decay"]["params"]
    }
    before = {k: v.clone() for k, v in network.state_dict().items()}
    network.train()
    optimizer = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in recipe.param_groups],
        lr=1e-3,
    )
    images = torch.rand(2, 3, 64, 64) * 255
    labels = torch.randint(0, 3, (2, 64, 64))
    recipe.loss(images, labels).backward()
    optimizer.step()
    after = network.state_dict()
    for name, parameter in network.named_parameters():
        trains = name.startswith(("clip.visual.", "transformer."))
        assert parameter.requires_grad is trains, name
        if trains:  # (the random ConvNeXt's layer scale 1e-6 makes some steps round away)
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None and torch.equal(before[name], after[name]), name
    for name in ("clip.visual.head.proj.weight", "transformer.conv1.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_the_loss_sums_the_bce_of_the_final_and_the_three_auxiliary_outputs():
    adapter = _tiny_adapter()
    recipe = adapter.training_recipe(CLASSES)
    network = recipe.module
    images = torch.rand(1, 3, 64, 64) * 255
    labels = torch.randint(0, 3, (1, 64, 64))
    labels[0, :5] = 255
    adapter.predict(images / 255)  # sets the evaluation pooling (1); the loss sets 2 back
    assert network.transformer.decoder1.attention.pooling_size == (1, 1)
    with torch.no_grad():
        loss = recipe.loss(images, labels)
        mean = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(1, 3, 1, 1)
        std = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(1, 3, 1, 1)
        out = network((images - mean) / std, network.embed_classes(CLASSES))
    assert network.transformer.decoder1.attention.pooling_size == (2, 2)
    terms = [bce_one_hot_loss(o, labels) for o in (out.logits, *out.aux)]
    torch.testing.assert_close(loss, sum(terms))
    assert recipe.defaults["max_iters"] == 80_000 and recipe.defaults["batch_size"] == 4
    assert (recipe.defaults["lr"], recipe.defaults["clip_norm"]) == (2e-4, 0.01)
    assert "ResizeShortestEdge" in repr(recipe.transform) and "2666" in repr(recipe.transform)


# -- full-size counts ------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", list(DECODER))
def test_full_size_parameter_counts(backbone):
    model = SED(CONFIGS[backbone], device="meta")
    decoder = model.transformer
    expected = {**DECODER_MODULES, "decoder_guidance_projection": GUIDANCE_PROJECTION[backbone]}
    found = {name: count(module)[0] for name, module in decoder.named_children()}
    assert found == expected
    assert count(decoder) == (DECODER[backbone], DECODER[backbone])
    clip_total, visual = CLIP[backbone]
    assert count(model.clip) == (clip_total, visual)  # CLIP_FINETUNE "full": the image tower
    assert count(model) == (clip_total + DECODER[backbone], visual + DECODER[backbone])


def test_convnext_b_totals_against_the_rsktseg_readme():
    """RSKT-Seg's README lists SED as 180.76 M total / 89.59 M trainable (third party,
    unverified): ours are 180,761,741 and 89,598,220 (89.60 M rounded; the README's figure
    looks truncated)."""
    total, trainable = count(SED(CONFIGS["convnext-b"], device="meta"))
    assert round(total / 1e6, 2) == 180.76
    assert int(trainable / 1e4) / 100 == 89.59, trainable


def test_adapters_info_reports_the_decoder_as_head(cli):
    result = cli("adapters", "info", "sed", "--backbone", "convnext-b", "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["groups"]["head"] == {"total": 1_376_396, "trainable": 1_376_396}
    clip_total, visual = CLIP["convnext-b"]
    assert info["groups"]["clip"] == {"total": clip_total, "trainable": visual}
    assert (info["total"], info["trainable"]) == (180_761_741, 89_598_220)


# -- original-format checkpoints --------------------------------------------------------------
@pytest.mark.parametrize("backbone", list(KEY_FILES))
def test_a_synthesised_original_checkpoint_loads_strictly(backbone):
    """Every key of the original state dict (derived from the code into tests/data) with its
    shape loads with no missing or unexpected key; one less or one more is named."""
    model = SED(CONFIGS[backbone], device="meta")
    keys = spec_keys(KEY_FILES[backbone])
    state = {key: torch.empty(shape, device="meta") for key, shape in keys.items()}
    assert KEYS.load(model, {"model": state, "iteration": 79_999}) == []
    gone = "sem_seg_head.predictor.transformer.decoder2.cnext.gamma"
    missing = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(CheckpointMismatchError, match=f"missing keys: {gone}"):
        KEYS.load(model, missing)
    extra = dict(state, **{"sem_seg_head.predictor.transformer.decoder4.up.weight": state[gone]})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: .*decoder4\.up\.weight"):
        KEYS.load(model, extra)


def _original(model: SED) -> dict[str, torch.Tensor]:
    return {KEYS.to_original(key): value.clone() for key, value in model.state_dict().items()}


def test_tiny_checkpoints_load_back_through_the_adapter(tmp_path, tiny):
    path = tmp_path / "model_final.pth"
    torch.save({"model": _original(tiny)}, path)
    adapter = create_adapter("sed", backbone="tiny")
    adapter.load(path, "cpu")
    for key, value in tiny.state_dict().items():
        assert torch.equal(adapter.network.state_dict()[key], value), key
    state = _original(tiny)
    del state["sem_seg_head.predictor.transformer.head.bias"]
    torch.save(state, path)
    with pytest.raises(UserError, match=r"missing keys: sem_seg_head\.predictor\.transformer"):
        create_adapter("sed", backbone="tiny").load(path, "cpu")


def test_checkpoint_backbone_and_format_errors(tmp_path):
    key = "sem_seg_head.predictor.clip_model.text_projection"
    large = tmp_path / "sed_large.pth"
    torch.save({"model": {key: torch.zeros(768, 768)}}, large)
    with pytest.raises(UserError, match="backbone=convnext-l, but backbone=convnext-b given"):
        create_adapter("sed", backbone="convnext-b").load(large, "cpu")
    odd = tmp_path / "odd.pth"
    torch.save({"model": {key: torch.zeros(32, 99)}}, odd)
    with pytest.raises(UserError, match=r"width 99, not a released backbone.s \(640 \(convnext"):
        create_adapter("sed").load(odd, "cpu")
    other = tmp_path / "other.pth"
    torch.save({"model": {"foo": torch.zeros(1)}}, other)
    with pytest.raises(UserError, match="not a SED checkpoint"):
        create_adapter("sed").load(other, "cpu")
    with pytest.raises(UserError, match="needs a trained checkpoint"):
        create_adapter("sed", backbone="convnext-l").load(None, "cpu")


def test_pretrained_init_loads_an_open_clip_file(tmp_path):
    torch.manual_seed(9)
    clip = SED(CONFIGS["tiny"]).clip
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    adapter = create_adapter("sed", backbone="tiny", init="pretrained", clip_weights=str(path))
    adapter.load(None, "cpu")
    for key, value in clip.state_dict().items():
        assert torch.equal(adapter.network.clip.state_dict()[key], value), key
    with pytest.raises(UserError, match="cannot load the pretrained CLIP"):
        create_adapter("sed", backbone="tiny", init="pretrained").load(None, "cpu")


# -- early rejection ----------------------------------------------------------------------------
class FixedLogits(nn.Module):
    """An auxiliary head replaced by fixed logits (rows = the classes still decoded)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.logits.shape[0]
        return self.logits.expand(-1, -1, *x.shape[-2:])


class _HeadWithCorner(FixedLogits):
    def __init__(self, logits: torch.Tensor, corner_class: int) -> None:
        super().__init__(logits)
        self.corner_class = corner_class

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x).clone()
        out[self.corner_class, 0, 0, 0] = 5.0
        return out


def test_any_pixel_topk():
    logits = torch.zeros(1, 5, 2, 2)
    logits[0, 2] = 1
    logits[0, 4, 0, 0] = 2
    assert any_pixel_topk(logits, 1).tolist() == [False, False, True, False, True]
    assert any_pixel_topk(logits, 9).all()


def test_early_rejection_keeps_the_topk_classes_of_each_stage():
    torch.manual_seed(4)
    model = SED(CONFIGS["tiny"]).eval()
    text = F.normalize(torch.randn(6, 80, 32), dim=-1)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model.probabilities(images, text)
        torch.testing.assert_close(model.probabilities(images, text, topk=6), full)
        decoder = model.transformer
        stage0 = torch.zeros(6, 1, 1, 1)
        stage0[2] = 1  # class 2 leads everywhere ...
        decoder.head0 = _HeadWithCorner(stage0, corner_class=4)  # ... class 4 at one pixel
        decoder.head1 = FixedLogits(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))  # [2, 4] -> 4
        decoder.head2 = FixedLogits(torch.zeros(1, 1, 1, 1))
        fast = model.probabilities(images, text, topk=1)
    assert fast.shape == full.shape
    kept = fast.flatten(2).amax(-1) > 0
    assert kept.tolist() == [[i == 4 for i in range(6)]] * 2
    assert ((fast[:, 4] > 0) & (fast[:, 4] < 1)).all()


# -- the adapter ------------------------------------------------------------------------------
def _tiny_adapter(**options) -> object:
    adapter = create_adapter("sed", backbone="tiny", **options)
    adapter.load(None, "cpu")
    adapter.set_vocabulary(CLASSES)
    return adapter


def test_predict_is_the_official_protocol_built_by_hand():
    """Shortest edge 640 (PIL bilinear, 8 bit), CLIP statistics, no padding, squash to the
    encoder size, sigmoid, back to the input size; class attention pooling 1 (eval.sh)."""
    import numpy as np
    from PIL import Image

    adapter = _tiny_adapter()
    pixels = np.random.default_rng(0).integers(0, 256, (50, 87, 3), dtype=np.uint8)
    mapped = np.array(Image.fromarray(pixels).resize((1114, 640), Image.BILINEAR))
    image = torch.from_numpy(mapped).permute(2, 0, 1)[None].float()
    mean = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(1, 3, 1, 1)
    std = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(1, 3, 1, 1)
    network = adapter.network
    network.set_pooling(1)
    with torch.no_grad():
        squashed = F.interpolate((image - mean) / std, size=(256, 256), mode="bilinear")
        out = network(squashed, adapter.text).logits.sigmoid()
    expected = F.interpolate(out, size=(50, 87), mode="bilinear")
    network.set_pooling(2)  # predict sets the evaluation pooling itself
    image01 = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    scores = adapter.predict(image01)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    described = adapter.describe()
    assert described["pooling"] == [1, 1] and described["squash"] == [256, 256]
    assert described["early_rejection_topk"] is None


def test_fast_inference_zeroes_rejected_classes_and_options_are_checked():
    scores = _tiny_adapter(fast_inference=True, topk=1).predict(torch.rand(2, 3, 40, 30))
    assert scores.shape == (2, 3, 40, 30)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert _tiny_adapter(fast_inference=True, topk=8).describe()["early_rejection_topk"] == 8
    with pytest.raises(UserError, match="topk must be an integer >= 1"):
        create_adapter("sed", topk=0)
    with pytest.raises(UserError, match="clip_multiplier must be a number >= 0"):
        create_adapter("sed", clip_multiplier=-1)


def test_run_and_train_with_the_tiny_backbone_on_synthetic_data(cli, synthetic_root, tmp_path):
    args = ["--protocol", "demo", "--data-root", synthetic_root, "--device", "cpu"]
    result = cli("run", "--model", "sed", "--backbone", "tiny", *args, "--results", tmp_path)
    assert result.code == 0, result.err
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert record["options"]["backbone"] == "tiny"
    out = tmp_path / "train"
    done = cli(
        "train", "--model", "sed", "--backbone", "tiny", "-o", "train_size=64",
        "--max-iters", "2", "--batch-size", "2", "--workers", "0", "--out", out, *args,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads((out / "final.json").read_text())["iteration"] == 2
    trained = create_adapter("sed", backbone="tiny")
    trained.load(out / "final.safetensors", "cpu")  # our names load through the original path
    assert trained.weights_sha256() is not None
