"""SegEarth-OV: the SegEarth last block and global-bias term, SimFeatUp (parameter count, key names,
the chunked per-pixel filter against direct references), the original upsampler checkpoint, and
the adapter's protocol (resize, windows, synonyms, background rule) end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from tests_helpers import spec_keys

from ovrsisbench.errors import UserError
from ovrsisbench.models.common.checkpoint import CheckpointMismatchError
from ovrsisbench.models.common.dense_clip import (
    TINY_VIT_CONFIG,
    DenseCLIP,
    build_clip,
)
from ovrsisbench.models.common.text import IMAGENET_TEMPLATES, TextClassifier
from ovrsisbench.models.segearth_ov import (
    CONFIGS,
    SimFeatUp,
    adaptive_conv,
    build_network,
    class_probabilities,
    load_upsampler,
)
from ovrsisbench.models.segearth_ov.model import segearth_pos_embed
from ovrsisbench.models.segearth_ov.upsampler import JointBilateralLayer
from ovrsisbench.protocol import BackgroundRule, load_protocol
from ovrsisbench.registry import create_adapter

ADAPTER = "segearth_ov"
KEYS = "segearth_ov_upsampler_keys.txt"
# spec baselines.md 7 (derived: counted from the original code) and open_clip's ViT-B-16
UPSAMPLER_PARAMS, CLIP_B16_PARAMS = 293_729, 149_620_737
VOCABULARY = [["road", "street"], ["building"], ["tree"]]


def _tiny_clip(seed: int = 0) -> DenseCLIP:
    torch.manual_seed(seed)
    return DenseCLIP(build_clip(TINY_VIT_CONFIG).eval())


def _loaded(**options):
    tiny = create_adapter(ADAPTER, backbone="tiny", **options)
    tiny.load(None, "cpu")
    tiny.set_vocabulary(VOCABULARY)
    return tiny


@pytest.fixture(scope="module")
def bilinear():
    """The tiny model, upsampling bilinearly (the ablation; cheaper than SimFeatUp for the tests
    of the protocol's geometry, which does not depend on the upsampler)."""
    return _loaded(upsampler="bilinear")


@pytest.fixture(scope="module")
def quick():
    """The tiny model with images resized to fit 224 x 224: one window for a square image (the
    scores' post-processing does not depend on the geometry; this keeps the tests fast)."""
    return _loaded(long_side=224)


# -- the CLIP side -------------------------------------------------------------------------------
def _segearth_by_hand(visual, images):
    """Blocks 1..L-1, then the last block written out per head from its weights: the sum of the
    softmaxed q-q, k-k and v-v similarities applied to v, out_proj, no residual, no MLP; ln_post
    and proj on every token. Returns the patch map and the CLS output."""
    x = visual._embeds(images)
    *body, last = visual.transformer.resblocks
    for block in body:
        x = block(x)
    width, heads = x.shape[-1], last.attn.num_heads
    size = width // heads
    y = last.ln_1(x)
    weight, bias = last.attn.in_proj_weight.split(width), last.attn.in_proj_bias.split(width)
    q, k, v = (y @ w.T + b for w, b in zip(weight, bias, strict=True))
    outputs = []
    for head in range(heads):
        part = slice(head * size, (head + 1) * size)
        qh, kh, vh = q[..., part], k[..., part], v[..., part]
        weights = sum(
            torch.softmax(a @ a.transpose(1, 2) / math.sqrt(size), dim=-1) for a in (qh, kh, vh)
        )
        outputs.append(weights @ vh)
    out = last.attn.out_proj(torch.cat(outputs, dim=-1))
    tokens = visual.ln_post(out) @ visual.proj
    grid = visual.grid_size
    return tokens[:, 1:].transpose(1, 2).reshape(len(images), -1, *grid), tokens[:, 0]


def test_segearth_last_block_matches_a_direct_recomputation():
    clip = _tiny_clip()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = clip(images, "segearth")
        dense, cls = _segearth_by_hand(clip.model.visual, images)
    torch.testing.assert_close(features.dense, dense)
    torch.testing.assert_close(features.cls, cls)


def test_pos_embed_resize_follows_segearth_scale_factors():
    """Unchanged on the pretrained grid; otherwise bicubic with scale (side + 0.1) / 14 (so the
    samples differ from a size-based resize even along a side that keeps 14 cells)."""
    pos = torch.randn(1 + 14 * 14, 8)
    assert segearth_pos_embed(pos, (14, 14), (14, 14)) is pos
    resized = segearth_pos_embed(pos, (14, 14), (14, 3))
    assert resized.shape == (1 + 14 * 3, 8)
    torch.testing.assert_close(resized[0], pos[0])
    grid = pos[1:].T.reshape(1, 8, 14, 14)
    expected = F.interpolate(grid, scale_factor=(14.1 / 14, 3.1 / 14), mode="bicubic")
    torch.testing.assert_close(resized[1:], expected.flatten(2)[0].T)
    by_size = F.interpolate(grid, size=(14, 3), mode="bicubic", align_corners=False)
    assert not torch.allclose(resized[1:], by_size.flatten(2)[0].T)


def _classifier(names: int, dim: int = 32, seed: int = 0) -> TextClassifier:
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(names, dim, generator=generator), dim=-1)
    return TextClassifier(embeddings, torch.arange(names), names)


def test_global_bias_term_is_lambda_times_the_cls_cosine():
    torch.manual_seed(0)
    network = build_network(CONFIGS["tiny"], upsampler=False, cls_bias=-0.3)
    network.set_classifier(_classifier(4))
    images = torch.randn(1, 3, 60, 70)  # padded to 64 x 80, centred
    with torch.no_grad():
        biased = network(images)
        network.cls_bias = 0.0
        plain = network(images)
        padded = F.pad(images, (5, 5, 2, 2))
        cls = network.clip(padded, "segearth").cls
    assert biased.shape == (1, 4, 60, 70)
    cls_logits = F.normalize(cls, dim=-1) @ network.text_embeddings.T
    torch.testing.assert_close(biased - plain, -0.3 * cls_logits[..., None, None].expand_as(plain))


def test_crops_are_padded_centred_and_cropped_back():
    torch.manual_seed(0)
    network = build_network(CONFIGS["tiny"], upsampler=False)
    network.set_classifier(_classifier(3))
    images = torch.randn(1, 3, 50, 61)  # padding 14 rows (7 + 7) and 3 columns (1 + 2)
    with torch.no_grad():
        logits = network(images)
        whole = network(F.pad(images, (1, 2, 7, 7)))
    torch.testing.assert_close(logits, whole[..., 7:57, 1:62])


# -- SimFeatUp ---------------------------------------------------------------------------------
def test_upsampler_parameter_count_and_key_names_on_meta_and_cpu():
    spec = {k.removeprefix("upsampler."): s for k, s in spec_keys(KEYS).items()}
    assert sum(math.prod(shape) for shape in spec.values()) == UPSAMPLER_PARAMS
    for device in ("meta", "cpu"):
        with torch.device(device):
            upsampler = SimFeatUp(512)
        assert sum(p.numel() for p in upsampler.parameters()) == UPSAMPLER_PARAMS
        assert {k: tuple(v.shape) for k, v in upsampler.state_dict().items()} == spec


def _adaptive_conv_reference(padded, kernel):
    """FeatUp's AdaptiveConv loop: out[b,c,y,x] = sum_ij kernel[b,y,x,i,j] padded[b,c,y+i,x+j],
    with the (B, d*d, h, w) kernel viewed as (B, h, w, d, d)."""
    b, taps, height, width = kernel.shape
    d = math.isqrt(taps)
    filters = kernel.permute(0, 2, 3, 1).reshape(b, height, width, d, d)
    out = torch.zeros(b, padded.shape[1], height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            window = padded[:, :, y : y + d, x : x + d].double()
            out[:, :, y, x] = (window * filters[:, None, y, x].double()).sum((-2, -1))
    return out.float()


def test_tiled_filter_equals_the_direct_reference_whatever_the_tiles():
    generator = torch.Generator().manual_seed(0)
    padded = torch.randn(2, 7, 9 + 4, 6 + 4, generator=generator)
    kernel = torch.randn(2, 25, 9, 6, generator=generator)
    expected = _adaptive_conv_reference(padded, kernel)
    tiles = [(1, 1), (3, 2), (7, 4), (64, 9), (128, 8), (2, 100)]  # (channels, rows)
    results = [adaptive_conv(padded, kernel, chunk, rows) for chunk, rows in tiles]
    torch.testing.assert_close(results[0], expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(result, results[0]) for result in results[1:])


def _layer_by_unfold(layer, source, guidance):
    """The original JBULearnedRange forward with its unfold-based range kernel and the Python
    AdaptiveConv fallback of simfeatup_dev/upsamplers.py (``adaptive_conv_py_simple``)."""
    b, _, height, width = guidance.shape
    r, d = layer.radius, layer.diameter
    keys = layer.range_proj(guidance)
    neighbours = F.unfold(F.pad(keys, [r] * 4, mode="reflect"), d)
    neighbours = neighbours.reshape(b, keys.shape[1], d * d, height, width).permute(0, 1, 3, 4, 2)
    temperature = layer.range_temp.exp().clamp_min(1e-4).clamp_max(1e4)
    similarity = torch.einsum("bchwp,bchw->bphw", neighbours, keys)
    grid = torch.linspace(-1, 1, d)
    x, y = torch.meshgrid(grid, grid, indexing="ij")
    spatial = torch.exp(-(x**2 + y**2) / (2 * layer.sigma_spatial**2)).reshape(1, d * d, 1, 1)
    kernel = F.softmax(temperature * similarity, dim=1) * spatial
    kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
    kernel = kernel + 0.1 * layer.fixup_proj(torch.cat([kernel, guidance], dim=1))
    filters = kernel.permute(0, 2, 3, 1).reshape(b, height * width, d * d)
    high = F.interpolate(source, (height, width), mode="bicubic", align_corners=False)
    patches = F.unfold(F.pad(high, [r] * 4, mode="reflect"), d)
    patches = patches.view(b, source.shape[1], d * d, height * width)
    return torch.einsum("bnf,bcfn->bcn", filters, patches).view(b, -1, height, width)


def test_joint_bilateral_layer_matches_the_unfold_formulation():
    torch.manual_seed(0)
    layer = JointBilateralLayer(3, 32, radius=5).eval()
    with torch.no_grad():
        layer.range_temp.fill_(0.7)
        layer.sigma_spatial.fill_(0.6)
        source, guidance = torch.randn(2, 6, 4, 5), torch.randn(2, 3, 8, 10)
        torch.testing.assert_close(
            layer(source, guidance), _layer_by_unfold(layer, source, guidance), rtol=1e-4, atol=1e-5
        )


def test_simfeatup_upsamples_x16_with_the_fixup_residual():
    torch.manual_seed(0)
    upsampler = SimFeatUp(8, key_dim=4, radius=2).eval()
    source, guidance = torch.randn(1, 8, 2, 3), torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = upsampler(source, guidance)
        stage = source
        for _ in range(4):
            small = F.adaptive_avg_pool2d(guidance, (2 * stage.shape[-2], 2 * stage.shape[-1]))
            stage = upsampler.up(stage, small)
    assert out.shape == (1, 8, 32, 48)
    torch.testing.assert_close(out, stage + 0.1 * upsampler.fixup_proj[1](stage))


# -- the original upsampler checkpoint -------------------------------------------------------
def _lightning_checkpoint(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict:
    """A checkpoint as likyoo/SimFeatUp's trainer saves it (state_dict of upsampler.* keys)."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    return {
        "epoch": 0,
        "global_step": 50_000,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
        "lr_schedulers": [],
    }


def test_the_original_checkpoint_loads_strictly_and_names_bad_keys():
    checkpoint = _lightning_checkpoint(spec_keys(KEYS))
    upsampler = SimFeatUp(512)
    load_upsampler(upsampler, checkpoint)  # zero missing, zero unexpected
    for key, value in upsampler.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"upsampler.{key}"]), key
    state = checkpoint["state_dict"]
    missing = {k: v for k, v in state.items() if k != "upsampler.up.sigma_spatial"}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: up\.sigma_spatial"):
        load_upsampler(upsampler, {"state_dict": missing})
    extra = dict(state, **{"downsampler.w": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: downsampler\.w"):
        load_upsampler(upsampler, {"state_dict": extra})


def _tiny_upsampler_file(tmp_path, seed: int = 1):
    with torch.device("meta"):
        shapes = SimFeatUp(32, CONFIGS["tiny"].key_dim, CONFIGS["tiny"].radius).state_dict()
    checkpoint = _lightning_checkpoint(
        {f"upsampler.{k}": tuple(v.shape) for k, v in shapes.items()}, seed
    )
    path = tmp_path / "jbu_one_tiny.ckpt"
    torch.save(checkpoint, path)
    return path, checkpoint["state_dict"]


def test_adapter_loads_the_upsampler_file_from_weights_or_the_option(tmp_path):
    path, state = _tiny_upsampler_file(tmp_path)
    hashes = set()
    for how in ({"weights": path}, {"option": str(path)}):
        adapter = create_adapter(ADAPTER, backbone="tiny", upsampler_weights=how.get("option"))
        adapter.load(how.get("weights"), "cpu")
        for key, value in adapter.network.upsampler.state_dict().items():
            assert torch.equal(value, state[f"upsampler.{key}"]), key
        hashes.add(adapter.weights_sha256())
    random = create_adapter(ADAPTER, backbone="tiny")
    random.load(None, "cpu")
    assert len(hashes) == 1 and random.weights_sha256() not in hashes
    torch.save({"state_dict": {k: v for k, v in state.items() if "range_temp" not in k}}, path)
    with pytest.raises(UserError, match=r"jbu_one_tiny\.ckpt .*missing keys: up\.range_temp"):
        create_adapter(ADAPTER, backbone="tiny").load(path, "cpu")


def test_missing_weights_and_impossible_combinations_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("OVRSISBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(UserError, match=r"xclip_jbu_one_million_aid\.ckpt are missing; download"):
        create_adapter(ADAPTER).load(None, "cpu")
    with pytest.raises(UserError, match="vit-l needs a 768-d SimFeatUp checkpoint"):
        create_adapter(ADAPTER, backbone="vit-l").load(None, "cpu")
    with pytest.raises(UserError, match="upsampler=bilinear has no weights"):
        create_adapter(ADAPTER, backbone="tiny", upsampler="bilinear").load(tmp_path / "x", "cpu")
    with pytest.raises(UserError, match=r"upsampler weights .*absent\.ckpt do not exist"):
        create_adapter(ADAPTER, backbone="tiny").load(tmp_path / "absent.ckpt", "cpu")
    with pytest.raises(UserError, match="precision=fp16 needs a CUDA device"):
        create_adapter(ADAPTER, backbone="tiny", precision="fp16").load(None, "cpu")
    with pytest.raises(UserError, match="stride=300 exceeds window=224"):
        create_adapter(ADAPTER, stride=300)


# -- the adapter ----------------------------------------------------------------------------------
def _crop_sizes(adapter, size):
    seen = []
    hook = adapter.network.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[-2:]))
    )
    try:
        scores = adapter.predict(torch.rand(1, 3, *size))
    finally:
        hook.remove()
    return scores, seen


@pytest.mark.parametrize(
    ("size", "crops"),
    [
        ((100, 150), [(224, 224)] * 6),  # -> 299 x 448: rows at 0, 75; columns at 0, 112, 224
        ((500, 300), [(224, 224)] * 6),  # -> 448 x 269 (mmcv rounds half up)
        ((30, 500), [(27, 224)] * 3),  # -> 27 x 448: the short side is one crop of 27 rows
    ],
)
def test_predict_follows_the_resize_and_window_protocol(bilinear, size, crops):
    scores, seen = _crop_sizes(bilinear, size)
    assert seen == crops
    assert scores.shape == (1, 3, *size)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_scores_are_softmax_over_all_names_then_max_over_synonyms(quick):
    images = torch.rand(1, 3, 64, 64)
    quick.set_vocabulary([["road"], ["street"], ["building"], ["tree"]])
    try:
        per_name = quick.predict(images)
    finally:
        quick.set_vocabulary(VOCABULARY)
    torch.testing.assert_close(per_name.sum(1), torch.ones(1, 64, 64))
    expected = torch.stack([per_name[:, :2].amax(1), per_name[:, 2], per_name[:, 3]], dim=1)
    torch.testing.assert_close(quick.predict(images), expected)


def test_class_probabilities_by_hand():
    # two classes, three names (class 0: names 0 and 1): softmax of 50 x logits over all names
    logits = torch.tensor([0.20, 0.25, 0.22]).view(1, 3, 1, 1)
    exp = [math.exp(50 * value) for value in (0.20, 0.25, 0.22)]
    expected = torch.tensor([max(exp[0], exp[1]), exp[2]]) / sum(exp)
    got = class_probabilities(logits, torch.tensor([0, 0, 1]), 2, 50)
    torch.testing.assert_close(got.view(2), expected.float())


def test_a_new_vocabulary_drops_the_previous_background_rule(quick):
    quick.set_background(BackgroundRule(index=1, threshold=0.9))
    quick.set_vocabulary(VOCABULARY)
    assert quick.background is None and quick.describe()["background_rule"] is None


def test_background_rule_changes_exactly_the_low_confidence_pixels(quick):
    adapter, images = quick, torch.rand(1, 3, 64, 64)
    plain = adapter.predict(images)
    best = plain.amax(1)
    threshold = best.median().item()
    adapter.set_background(BackgroundRule(index=1, threshold=threshold))
    try:
        ruled = adapter.predict(images)
        assert adapter.describe()["background_rule"] == {"index": 1, "threshold": threshold}
        with pytest.raises(UserError, match="background class index 3 is outside"):
            adapter.set_background(BackgroundRule(index=3, threshold=0.5))
    finally:
        adapter.set_background(None)
    low = best < threshold
    assert 0 < low.sum() < low.numel()
    assert (ruled.argmax(1)[low] == 1).all()
    assert torch.equal(ruled[:, [0, 2]], plain[:, [0, 2]])
    assert torch.equal(ruled[:, 1][~low], plain[:, 1][~low])
    assert torch.equal(adapter.predict(images), plain)  # rule None: off again


def test_training_free_and_described():
    adapter = _loaded()
    assert not adapter.trainable and adapter.applies_background
    assert not any(p.requires_grad for p in adapter.network.parameters())
    with pytest.raises(NotImplementedError):
        adapter.training_recipe(VOCABULARY)
    described = adapter.describe()
    assert described["num_templates"] == len(IMAGENET_TEMPLATES) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and "{}" in IMAGENET_TEMPLATES[-1]
    assert described["pixel_mean_255"] == [122.771, 116.746, 104.094]
    assert described["pixel_std_255"] == [68.501, 66.632, 70.323]
    assert (described["cls_bias"], described["logit_scale"]) == (-0.3, 50)
    assert described["slide"]["window"] == 224 and described["slide"]["stride"] == 112
    assert described["resize"]["long_side"] == 448
    assert described["upsampler"] == "simfeatup" and described["precision"] == "fp32"
    cls = type(adapter)
    assert cls.name == ADAPTER and cls.source_url == "https://github.com/likyoo/SegEarth-OV"
    assert cls.demo_options == {"backbone": "tiny", "long_side": 112, "window": 56, "stride": 28}
    assert cls.default_protocol == "segearth"  # `run --model segearth_ov` without --protocol


def test_tiny_weights_follow_the_seed():
    hashes = []
    for seed in (0, 0, 1):
        adapter = create_adapter(ADAPTER, backbone="tiny", seed=seed)
        adapter.load(None, "cpu")
        hashes.append(adapter.weights_sha256())
    assert hashes[0] == hashes[1] != hashes[2]


def test_bilinear_ablation_has_no_upsampler(bilinear):
    assert bilinear.network.upsampler is None
    assert bilinear.describe()["upsampler"] == "bilinear"
    assert bilinear.predict(torch.rand(1, 3, 40, 50)).shape == (1, 3, 40, 50)


def test_adapters_info_reports_a_frozen_clip_and_the_upsampler_head(cli):
    result = cli("adapters", "info", ADAPTER, "--backbone", "vit-b", "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["groups"]["head"] == {"total": UPSAMPLER_PARAMS, "trainable": 0}
    assert info["groups"]["clip"] == {"total": CLIP_B16_PARAMS, "trainable": 0}
    assert (info["total"], info["trainable"]) == (CLIP_B16_PARAMS + UPSAMPLER_PARAMS, 0)


def test_run_with_the_tiny_backbone_on_synthetic_data(cli, synthetic_root, tmp_path):
    args = ["--protocol", "demo", "--data-root", synthetic_root, "--results", tmp_path]
    fast = ["-o", "long_side=64"]  # one window per 64-px image instead of 6-9 (test time)
    result = cli("run", "--model", ADAPTER, "--backbone", "tiny", "--device", "cpu", *fast, *args)
    assert result.code == 0, result.err
    records = sorted((tmp_path / "records").rglob("*.json"))
    assert len(records) == 2
    record = json.loads(records[0].read_text())
    assert (record["options"]["backbone"], record["options"]["long_side"]) == ("tiny", 64)
    assert record["params"]["trainable"] == 0
    assert record["timing"]["inference"]["upsampler"] == "simfeatup"


def test_run_applies_a_vocabulary_background_rule(cli, synthetic_root, tmp_path):
    """A protocol whose vocabulary carries SegEarth-OV's rule: the record says it was applied,
    and an impossible threshold (1.0) sends every pixel to the background class."""
    target = load_protocol("demo").evaluation[1].vocabulary
    data = yaml.safe_load(target.path.read_text())
    data["background"] = {"class": "water", "threshold": 1.0}
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "target-rule.yaml").write_text(yaml.safe_dump(data))
    protocol = tmp_path / "rule.yaml"
    entry = {"dataset": "synthetic-target", "split": "all", "vocabulary": "target-rule"}
    protocol.write_text(
        yaml.safe_dump({"name": "rule", "description": "rule test", "evaluation": [entry]})
    )
    args = ["--protocol", protocol, "--data-root", synthetic_root, "--results", tmp_path / "out"]
    result = cli("run", "--model", ADAPTER, "--backbone", "tiny", "-o", "long_side=64", *args)
    assert result.code == 0, result.err
    (path,) = (tmp_path / "out" / "records").rglob("*.json")
    record = json.loads(path.read_text())
    water = record["classes"].index("water")
    assert record["background_rule"] == {
        "class": "water", "index": water, "threshold": 1.0, "applied": True
    }  # fmt: skip
    predicted = record["per_class"]["pred_pixels"]
    assert predicted[water] == sum(predicted) > 0
