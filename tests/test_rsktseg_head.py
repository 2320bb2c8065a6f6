"""RSKT-Seg head: official key names, shapes and parameter counts; forward shapes; the maths of
the SET / CET blocks against explicit references; which parts mix classes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovrsisbench.models.common.catseg_head import cosine_cost, rotated_cosine_cost
from ovrsisbench.models.rsktseg.head import (
    FUSION_TYPES,
    TOP_LEVEL_CONV_NAMES,
    ClassFusionBlock,
    EffAggregatorLayer,
    RSKTDecoder,
    SpatialFusionBlock,
    build_top_level_convs,
    project_encoder_features,
)

DATA = Path(__file__).parent / "data"
PREFIX = "sem_seg_head.predictor.transformer."

# (clip_dim, num_layers, clip_width) of the two released configs.
VARIANTS = {"vitb": (512, 3, 768), "vitl": (768, 2, 1024)}

# param_counts.md 1.3: per-module counts of the new part (ViT-B N=3, ViT-L N=2).
DECODER_COUNTS = {
    "vitb": {
        "guidance_projection": 589_952,
        "text_guidance_projection": 65_664,
        "CLIP_decoder_guidance_projection.0": 73_760,
        "CLIP_decoder_guidance_projection.1": 18_448,
        "conv1": 25_216,
        "CLIP_decoder_guidance_projection_remote.0": 73_760,
        "CLIP_decoder_guidance_projection_remote.1": 18_448,
        "conv2": 6_400,
        "fusion_corr": 1_605_760,
        "DINO_decoder_guidance_projection.0": 73_760,
        "DINO_decoder_guidance_projection.1": 18_448,
        "Fusiondecoder1": 196_960,
        "Fusiondecoder1.up": 49_248,
        "Fusiondecoder1.conv": 147_712,
        "Fusiondecoder2": 49_328,
        "Fusiondecoder2.up": 12_336,
        "Fusiondecoder2.conv": 36_992,
        "head": 289,
    },
}
DECODER_COUNTS["vitl"] = {
    **DECODER_COUNTS["vitb"],
    "guidance_projection": 884_864,
    "text_guidance_projection": 98_432,
}
TOP_LEVEL_COUNTS = {
    "vitb": {
        "upsample1": 786_688,
        "upsample2": 1_572_992,
        "upsample1_remote": 786_688,
        "upsample2_remote": 1_572_992,
        "dino_decod_proj1": 196_864,
        "dino_decod_proj2": 393_344,
        "dino_down_sample": 1_573_376,
    },
}
TOP_LEVEL_COUNTS["vitl"] = {
    **TOP_LEVEL_COUNTS["vitb"],
    "upsample1": 1_048_832,
    "upsample2": 2_097_280,
    "dino_down_sample": 2_360_064,
}
# decoder total, top-level subtotal, all new parameters
TOTALS = {"vitb": (5_307_969, 6_882_944, 12_190_913), "vitl": (4_805_057, 8_456_064, 13_261_121)}

# param_counts.md 1.3: the leaves of one EffAggregatorLayer.
LAYER_LEAVES = {
    "spatial_fusion.sa.norm1": 256,
    "spatial_fusion.sa.attention.q": 32_896,
    "spatial_fusion.sa.attention.k": 32_896,
    "spatial_fusion.sa.attention.v": 16_512,
    "spatial_fusion.sa.attention.proj": 16_512,
    "spatial_fusion.sa.attention.sr_k": 262_400,
    "spatial_fusion.sa.attention.norm_k": 512,
    "spatial_fusion.sa.attention.sr_v": 65_664,
    "spatial_fusion.sa.attention.norm_v": 256,
    "spatial_fusion.sa.norm2": 256,
    "spatial_fusion.sa.mlp.fc1": 49_536,
    "spatial_fusion.sa.mlp.fc2": 49_536,
    "spatial_fusion.sa.mlp.fc3": 49_280,
    "spatial_fusion.sa.mlp.dwconv.dwconv": 6_400,
    "class_fusion.sa.norm1": 256,
    "class_fusion.sa.attention.q": 32_896,
    "class_fusion.sa.attention.k": 32_896,
    "class_fusion.sa.attention.v": 16_512,
    "class_fusion.sa.attention.proj": 16_512,
    "class_fusion.sa.norm2": 256,
    "class_fusion.sa.mlp.fc1": 49_536,
    "class_fusion.sa.mlp.fc2": 49_536,
    "class_fusion.sa.mlp.fc3": 49_280,
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_meta(variant: str) -> tuple[RSKTDecoder, dict[str, torch.nn.Module]]:
    clip_dim, num_layers, clip_width = VARIANTS[variant]
    with torch.device("meta"):
        decoder = RSKTDecoder(clip_dim=clip_dim, num_layers=num_layers)
        convs = build_top_level_convs(clip_width=clip_width, clip_dim=clip_dim)
    return decoder, convs


def read_key_table(variant: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of tests/data/rsktseg_head_keys_<variant>.txt, in file order."""
    rows = []
    for line in (DATA / f"rsktseg_head_keys_{variant}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, numel = line.split()
        shape = tuple(int(s) for s in shape.strip("[]").split(","))
        assert math.prod(shape) == int(numel), line
        rows.append((key, shape))
    return rows


def model_key_table(decoder, convs) -> list[tuple[str, tuple[int, ...]]]:
    rows = [(PREFIX + k, tuple(v.shape)) for k, v in decoder.state_dict().items()]
    for name, module in convs.items():
        rows += [(f"{name}.{k}", tuple(v.shape)) for k, v in module.state_dict().items()]
    return rows


# -- counts, keys and shapes (meta device: no memory, no init cost) -----------------------------
@pytest.mark.parametrize("variant", ["vitb", "vitl"])
def test_parameter_counts_match_the_official_model(variant):
    decoder, convs = build_meta(variant)
    modules = dict(decoder.named_modules())
    for name, expected in DECODER_COUNTS[variant].items():
        assert count(modules[name]) == expected, name
    for i, layer in enumerate(decoder.layers):
        assert count(layer) == 830_592, i
        assert count(layer.spatial_fusion) == 582_912
        assert count(layer.class_fusion) == 247_680
        leaves = dict(layer.named_modules())
        assert {n: count(leaves[n]) for n in LAYER_LEAVES} == LAYER_LEAVES
    assert list(convs) == list(TOP_LEVEL_CONV_NAMES)
    assert {n: count(m) for n, m in convs.items()} == TOP_LEVEL_COUNTS[variant]
    decoder_total, top_total, new_total = TOTALS[variant]
    assert count(decoder) == decoder_total
    assert sum(count(m) for m in convs.values()) == top_total
    assert count(decoder) + sum(count(m) for m in convs.values()) == new_total


@pytest.mark.parametrize("variant", ["vitb", "vitl"])
def test_state_dict_keys_and_shapes_equal_the_official_checkpoint(variant):
    decoder, convs = build_meta(variant)
    expected = read_key_table(variant)
    actual = model_key_table(decoder, convs)
    assert len(actual) == len(dict(actual))
    missing = dict(expected).keys() - dict(actual).keys()
    unexpected = dict(actual).keys() - dict(expected).keys()
    assert not missing and not unexpected, (sorted(missing), sorted(unexpected))
    assert dict(actual) == dict(expected)
    assert actual == expected  # also the official registration order
    assert len(expected) == {"vitb": 192, "vitl": 146}[variant]


def test_num_layers_only_changes_the_layers():
    with torch.device("meta"):
        decoders = {n: RSKTDecoder(512, n) for n in (2, 3, 5)}
    assert {n: count(d) for n, d in decoders.items()} == {2: 4_477_377, 3: 5_307_969, 5: 6_969_153}
    assert len(decoders[5].state_dict()) == len(decoders[3].state_dict()) + 2 * 46


def test_fusion_variants_name_their_convs_as_the_official_code():
    shapes = {}
    for fusion in FUSION_TYPES:
        with torch.device("meta"):
            sd = RSKTDecoder(512, 1, fusion=fusion).state_dict()
        shapes[fusion] = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(("conv", "fus"))}
    assert shapes["simple_separate"] == {
        "conv1.weight": (128, 4, 7, 7),
        "conv1.bias": (128,),
        "conv2.weight": (128, 1, 7, 7),
        "conv2.bias": (128,),
        "fusion_corr.weight": (128, 256, 7, 7),
        "fusion_corr.bias": (128,),
    }
    assert shapes["simple_concatenation"] == {"conv1.weight": (128, 5, 7, 7), "conv1.bias": (128,)}
    assert shapes["simple_mean"] == {"conv1.weight": (128, 1, 7, 7), "conv1.bias": (128,)}
    with pytest.raises(ValueError, match="fusion"):
        RSKTDecoder(512, 1, fusion="mean")
    with pytest.raises(ValueError, match="hidden_dim"):
        RSKTDecoder(512, 1, hidden_dim=32)


# -- forward ------------------------------------------------------------------------------------
def random_inputs(batch, classes, h, w, clip_dim, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    text = F.normalize(rand(batch, classes, 1, clip_dim), dim=-1)
    return {
        "clip_cost": torch.tanh(rand(batch, 4, classes, h, w)),
        "dino_cost": torch.tanh(rand(batch, 1, classes, h, w)),
        "appearance": rand(batch, clip_dim, h, w),
        "text": text,
        "stage1": [rand(batch, 256, 2 * h, 2 * w) for _ in range(3)],
        "stage2": [rand(batch, 128, 4 * h, 4 * w) for _ in range(3)],
    }


@pytest.fixture(scope="module")
def tiny_decoder() -> RSKTDecoder:
    torch.manual_seed(0)
    return RSKTDecoder(clip_dim=64, num_layers=1).eval()


@pytest.mark.parametrize(
    ("batch", "classes", "h", "w"), [(1, 1, 4, 4), (2, 3, 6, 4), (1, 5, 8, 10), (3, 2, 2, 6)]
)
def test_forward_gives_logits_at_four_times_the_cost_grid(tiny_decoder, batch, classes, h, w):
    with torch.no_grad():
        logits = tiny_decoder(**random_inputs(batch, classes, h, w, clip_dim=64))
    assert logits.shape == (batch, classes, 4 * h, 4 * w)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_every_fusion_variant_runs(fusion):
    torch.manual_seed(0)
    decoder = RSKTDecoder(clip_dim=32, num_layers=2, fusion=fusion)
    logits = decoder(**random_inputs(2, 3, 4, 6, clip_dim=32))
    assert logits.shape == (2, 3, 16, 24)
    assert torch.isfinite(logits).all()


def test_every_parameter_is_trainable_and_gets_a_gradient():
    torch.manual_seed(0)
    decoder = RSKTDecoder(clip_dim=32, num_layers=2)
    convs = torch.nn.ModuleDict(build_top_level_convs(clip_width=48, clip_dim=32))
    params = list(decoder.parameters()) + list(convs.parameters())
    assert all(p.requires_grad for p in params)
    batch, classes, h, w = 2, 3, 4, 4
    gen = torch.Generator().manual_seed(1)
    stage1, stage2, dino_map = project_encoder_features(
        convs,
        [torch.randn(batch, 48, h, w, generator=gen) for _ in range(2)],
        [torch.randn(batch, 768, h, w, generator=gen) for _ in range(2)],
        [torch.randn(batch, 768, 2 * h, 2 * w, generator=gen) for _ in range(3)],
    )
    assert [tuple(t.shape) for t in stage1] == [(batch, 256, 2 * h, 2 * w)] * 3
    assert [tuple(t.shape) for t in stage2] == [(batch, 128, 4 * h, 4 * w)] * 3
    assert dino_map.shape == (batch, 32, h, w)
    appearance = torch.randn(batch, 32, h, w, generator=gen)
    text = F.normalize(torch.randn(batch, classes, 1, 32, generator=gen), dim=-1)
    clip_cost = cosine_cost(appearance, text).repeat(1, 4, 1, 1, 1)
    dino_cost = cosine_cost(dino_map, text)
    logits = decoder(clip_cost, dino_cost, appearance, text, stage1, stage2)
    logits.square().mean().backward()
    without_grad = [n for n, p in decoder.named_parameters() if p.grad is None]
    without_grad += [n for n, p in convs.named_parameters() if p.grad is None]
    assert not without_grad


def test_batch_items_are_independent_and_classes_are_permutation_equivariant(tiny_decoder):
    inputs = random_inputs(2, 4, 4, 6, clip_dim=64, seed=3)
    with torch.no_grad():
        logits = tiny_decoder(**inputs)
        single = {
            k: ([t[1:] for t in v] if isinstance(v, list) else v[1:]) for k, v in inputs.items()
        }
        torch.testing.assert_close(tiny_decoder(**single), logits[1:], rtol=1e-4, atol=1e-5)
        perm = torch.tensor([2, 0, 3, 1])
        permuted = dict(inputs)
        permuted["clip_cost"] = inputs["clip_cost"][:, :, perm]
        permuted["dino_cost"] = inputs["dino_cost"][:, :, perm]
        permuted["text"] = inputs["text"][:, perm]
        torch.testing.assert_close(tiny_decoder(**permuted), logits[:, perm], rtol=1e-4, atol=1e-5)


# -- which parts mix classes ----------------------------------------------------------------------
def test_class_attention_mixes_classes_and_spatial_attention_does_not():
    torch.manual_seed(0)
    layer = EffAggregatorLayer(hidden_dim=128).eval()
    batch, classes, h, w = 1, 3, 4, 4
    x = torch.randn(batch, 128, classes, h, w)
    appearance = torch.randn(batch, 128, h, w)
    text = torch.relu(torch.randn(batch, classes, 128))
    other_text = text.clone()
    other_text[:, 0] = torch.relu(torch.randn(128))
    with torch.no_grad():
        # CET: text guidance of class 0 changes the outputs of classes 1 and 2
        out, changed = layer(x, appearance, text), layer(x, appearance, other_text)
        assert not torch.allclose(out[:, :, 1:], changed[:, :, 1:])
        # SET: each class map on its own
        maps = x.transpose(1, 2).reshape(batch * classes, 128, h, w)
        guidance = appearance.repeat_interleave(classes, dim=0)
        spatial = layer.spatial_fusion(maps, guidance)
        other_maps = maps.clone()
        other_maps[0] = torch.randn(128, h, w)
        other_spatial = layer.spatial_fusion(other_maps, guidance)
        torch.testing.assert_close(other_spatial[1:], spatial[1:])
        assert not torch.allclose(other_spatial[0], spatial[0])


def test_decoder_text_of_one_class_changes_the_logits_of_the_others(tiny_decoder):
    inputs = random_inputs(1, 3, 4, 4, clip_dim=64, seed=5)
    changed = dict(inputs)
    changed["text"] = inputs["text"].clone()
    changed["text"][:, 0] = F.normalize(torch.randn(1, 64), dim=-1)
    with torch.no_grad():
        a, b = tiny_decoder(**inputs), tiny_decoder(**changed)
    assert not torch.allclose(a[:, 1:], b[:, 1:])


# -- the maths of the blocks against explicit references -----------------------------------------
def attention(q, k, v, heads):
    """Explicit multi-head softmax attention of (L, N, D) q and (L, M, D) k, v."""
    length, n, dim = q.shape
    d = dim // heads
    q, k, v = (t.reshape(length, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(length, n, dim)


def test_spatial_fusion_block_matches_an_explicit_reference():
    torch.manual_seed(0)
    dim, heads, h, w = 32, 8, 6, 4
    block = SpatialFusionBlock(dim, heads, sr_ratio=2).eval()
    sa = block.sa
    x, g = torch.randn(3, dim, h, w), torch.randn(3, dim, h, w)
    att = sa.attention

    def reduce(conv, norm, grid):  # (L, c, h, w) -> (L, h*w/4, c)
        return norm(conv(grid).flatten(2).transpose(1, 2))

    tokens = x.flatten(2).transpose(1, 2)
    y = sa.norm1(tokens)
    yg_grid = torch.cat([y.transpose(1, 2).reshape(3, dim, h, w), g], dim=1)
    q = att.q(yg_grid.flatten(2).transpose(1, 2))
    k = att.k(reduce(att.sr_k, att.norm_k, yg_grid))
    v = att.v(reduce(att.sr_v, att.norm_v, y.transpose(1, 2).reshape(3, dim, h, w)))
    assert k.shape == (3, h * w // 4, dim)
    tokens = tokens + att.proj(attention(q, k, v, heads))
    z = sa.norm2(tokens)
    m = sa.mlp.fc3(torch.clamp(sa.mlp.fc1(z), 0, 6) * sa.mlp.fc2(z))
    m = sa.mlp.dwconv.dwconv(m.transpose(1, 2).reshape(3, dim, h, w))
    expected = tokens.transpose(1, 2).reshape(3, dim, h, w) + m
    with torch.no_grad():
        torch.testing.assert_close(block(x, g), expected, rtol=1e-4, atol=1e-5)


def test_class_fusion_block_matches_an_explicit_reference():
    torch.manual_seed(0)
    dim, heads, batch, classes, h, w = 32, 8, 2, 5, 6, 4
    block = ClassFusionBlock(dim, heads).eval()
    sa = block.sa
    x = torch.randn(batch, dim, classes, h, w)
    g = torch.randn(batch, classes, dim)
    expected = torch.empty_like(x)
    for b in range(batch):
        maps = x[b].transpose(0, 1)  # (T, D, h, w)
        pooled = F.avg_pool2d(maps, 2)  # (T, D, h/2, w/2)
        z = pooled.flatten(2).permute(2, 0, 1)  # (locations, T, D)
        gg = g[b].expand(z.shape[0], classes, dim)
        y = sa.norm1(z)
        yg = torch.cat([y, gg], dim=-1)
        z = z + sa.attention.proj(
            attention(sa.attention.q(yg), sa.attention.k(yg), sa.attention.v(y), heads)
        )
        u = sa.norm2(z)
        z = z + torch.clamp(sa.mlp.fc3(torch.clamp(sa.mlp.fc1(u), 0, 6) * sa.mlp.fc2(u)), 0, 6)
        z = z.permute(1, 2, 0).reshape(classes, dim, h // 2, w // 2)
        up = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=True)
        expected[b] = (maps + up).transpose(0, 1)  # the pooled identity is inside `up` too
    with torch.no_grad():
        torch.testing.assert_close(block(x, g), expected, rtol=1e-4, atol=1e-5)


def test_cost_embedding_simple_separate():
    torch.manual_seed(0)
    decoder = RSKTDecoder(clip_dim=16, num_layers=1, hidden_dim=64)
    clip_cost, dino_cost = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 1, 3, 4, 4)
    with torch.no_grad():
        embed = decoder.embed_costs(clip_cost, dino_cost)
        for t in range(3):
            e_clip = torch.sigmoid(decoder.conv1(clip_cost[:, :, t]))
            e_dino = torch.sigmoid(decoder.conv2(dino_cost[:, :, t]))
            fused = torch.sigmoid(decoder.fusion_corr(torch.cat([e_clip, e_dino], dim=1)))
            torch.testing.assert_close(embed[:, :, t], fused + e_clip)


def test_rotated_cost_aligns_the_four_passes():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 5, 5, generator=gen)
    text = torch.randn(2, 3, 1, 8, generator=gen)
    passes = [torch.rot90(features, k=k, dims=(2, 3)) for k in range(4)]
    cost = rotated_cosine_cost(passes, text)
    assert cost.shape == (2, 4, 3, 5, 5)
    reference = cosine_cost(features, text)
    for k in range(4):
        torch.testing.assert_close(cost[:, k : k + 1], reference)
    assert cost.abs().max() <= 1 + 1e-6


def test_aggregator_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    layer = EffAggregatorLayer(128)
    for name, module in layer.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, torch.nn.Linear):
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.1), name
        elif isinstance(module, torch.nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            std = math.sqrt(2.0 / (fan_out // module.groups))
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            assert module.weight.std().item() == pytest.approx(std, rel=0.1), name
