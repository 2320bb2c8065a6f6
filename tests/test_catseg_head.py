"""The CAT-Seg aggregator core (models/common/catseg_head.py): the original key names and shapes
(spec param_counts.md 2.4), per-module counts (2.2), shapes of a tiny configuration, the
attention maths, class padding and selection, and the pooling switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests_helpers import spec_keys

from ovrsisbench.models.common.catseg_head import (
    CatSegAggregator,
    ClassTransformerLayer,
    SwinBlock,
    linear_attention,
    set_pooling,
    shifted_window_mask,
)

PREFIX = "sem_seg_head.predictor.transformer."

# param_counts.md 2.2, per official module below the prefix, for C = 512 (ViT-B) / 768 (ViT-L)
COUNTS = {
    512: {"guidance_projection": 589_952, "text_guidance_projection": 65_664, "": 2_308_961},
    768: {"guidance_projection": 884_864, "text_guidance_projection": 98_432, "": 2_636_641},
}
SHARED_COUNTS = {
    "layers": 1_354_240,
    "layers.0": 677_120,
    "layers.1": 677_120,
    "layers.0.swin_block": 462_336,
    "layers.0.attention": 214_784,
    "conv1": 6_400,
    "decoder_guidance_projection": 92_208,
    "decoder_guidance_projection.0": 73_760,
    "decoder_guidance_projection.1": 18_448,
    "decoder1": 160_096,
    "decoder1.up": 49_248,
    "decoder1.conv": 110_848,
    "decoder2": 40_112,
    "decoder2.up": 12_336,
    "decoder2.conv": 27_776,
    "head": 289,
}


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_state_dict_is_the_original_key_list_in_order():
    ours = [
        (PREFIX + k, tuple(v.shape)) for k, v in CatSegAggregator(512, 512).state_dict().items()
    ]
    spec = [
        (k, s) for k, s in spec_keys("catseg_head_keys_vitb.txt").items() if k.startswith(PREFIX)
    ]
    assert ours == spec


@pytest.mark.parametrize("dim", [512, 768])
def test_per_module_parameter_counts_match_the_original(dim):
    with torch.device("meta"):
        aggregator = CatSegAggregator(dim, dim)
    for name, count in {**SHARED_COUNTS, **COUNTS[dim]}.items():
        assert _numel(aggregator.get_submodule(name)) == count, name
    assert all(buffer.is_meta for buffer in aggregator.buffers())


def _tiny(**kwargs) -> CatSegAggregator:
    torch.manual_seed(0)
    options = {"feature_resolution": (4, 4), "window_size": 2, "pad_len": 8, **kwargs}
    return CatSegAggregator(24, 24, **options).eval()


def _inputs(batch: int = 2, classes: int = 3, dim: int = 24, grid: int = 4):
    generator = torch.Generator().manual_seed(classes)
    dense = torch.randn(batch, dim, grid, grid, generator=generator)
    text = F.normalize(torch.randn(batch, classes, 1, dim, generator=generator), dim=-1)
    guidance = [
        torch.randn(batch, 256, 2 * grid, 2 * grid, generator=generator),
        torch.randn(batch, 128, 4 * grid, 4 * grid, generator=generator),
    ]
    return dense, text, dense, guidance


def test_tiny_shapes_and_the_shifted_window_mask():
    aggregator = _tiny()
    with torch.no_grad():
        logits = aggregator(*_inputs(classes=3))
    assert logits.shape == (2, 3, 16, 16)
    assert torch.isfinite(logits).all()
    mask = aggregator.layers[0].swin_block.block_2.attn_mask
    assert mask.shape == (4, 4, 4)  # 2x2 windows of 2x2 tokens
    assert aggregator.layers[0].swin_block.block_1.attn_mask is None
    # only the first window holds tokens that were neighbours before the shift
    assert bool((mask[0] == 0).all()) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert torch.equal(mask, shifted_window_mask((4, 4), 2, 1))


def test_more_classes_than_pad_len_keep_the_best_and_give_the_rest_minus_100():
    aggregator = _tiny(pad_len=4)
    dense, text, appearance, guidance = _inputs(classes=7)
    with torch.no_grad():
        logits = aggregator(dense, text, appearance, guidance)
    dropped = (logits == -100).flatten(2).all(-1)  # (B, T)
    assert logits.shape == (2, 7, 16, 16) and dropped.sum(1).tolist() == [3, 3]
    peak = torch.einsum("bchw,btpc->bthw", F.normalize(dense, dim=1), text).flatten(2).amax(-1)
    best = peak.topk(4, dim=1).indices
    assert not dropped.gather(1, best).any()


def test_grid_no_larger_than_the_window_is_one_full_attention_window():
    """A Swin block on a grid no larger than its window = plain softmax attention with q, k from
    [LN1(x); g] and v from LN1(x), then proj, residual and MLP (checks the guided attention)."""
    torch.manual_seed(1)
    block = SwinBlock(8, 4, (2, 2), num_heads=2, window=12, shift=6).eval()
    assert block.shift == 0 and block.attn_mask is None
    x, g = torch.randn(3, 4, 8), torch.randn(3, 4, 4)
    y = block.norm1(x)
    attn = block.attn
    heads = [slice(0, 4), slice(4, 8)]
    q, k, v = attn.q(torch.cat([y, g], -1)), attn.k(torch.cat([y, g], -1)), attn.v(y)
    out = torch.cat(
        [((q[..., h] @ k[..., h].mT) / 2).softmax(-1) @ v[..., h] for h in heads], dim=-1
    )
    expected = x + attn.proj(out)
    expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(block(x, g), expected, rtol=1e-5, atol=1e-5)


def test_linear_attention_is_the_normalised_kernel_product():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 5, 3, 4, generator=generator) for _ in range(3))
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    weights = torch.einsum("nlhd,nshd->nhls", phi_q, phi_k)
    expected = torch.einsum("nhls,nshd->nlhd", weights / weights.sum(-1, keepdim=True), v)
    torch.testing.assert_close(linear_attention(q, k, v), expected, rtol=1e-5, atol=1e-5)


def test_class_axis_is_padded_with_the_learnable_tokens():
    torch.manual_seed(3)
    layer = ClassTransformerLayer(16, 8, nheads=2, pooling_size=(2, 2), pad_len=6)
    x, guidance = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 3, 8)
    layer(x, guidance).sum().backward()
    assert layer.padding_tokens.grad.abs().sum() > 0
    assert layer.padding_guidance.grad.abs().sum() > 0
    assert layer(x, guidance).shape == x.shape


def test_pooling_can_be_switched_after_construction():
    aggregator = _tiny()
    inputs = _inputs()
    with torch.no_grad():
        pooled = aggregator(*inputs)
        set_pooling(aggregator, (1, 1))
        assert all(layer.attention.pooling_size == (1, 1) for layer in aggregator.layers)
        unpooled = aggregator(*inputs)
        aggregator.layers[0].set_pooling(2)
        assert aggregator.layers[0].attention.pooling_size == (2, 2)
    assert not torch.allclose(pooled, unpooled)
