"""RSKT-Seg encoders: split q/k/v attention, Cat-Seg dense CLIP, truncated RemoteCLIP, DINO RSIB.

Numerics use tiny random models on CPU; full-size models are built on the meta device only
(counts, key names and shapes, output shapes). Expected values: spec param_counts.md 1.4, 1.5,
1.7 and 1.9.3, rsktseg.md 4, 5.2-5.4 and 7.1.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovrsisbench.models.common.catseg_clip import (
    TINY_CATSEG_CONFIG,
    build_catseg_clip,
    build_remoteclip,
    dense_forward,
    encode_text,
    load_remoteclip_weights,
    remote_hooks,
    remoteclip_unused_keys,
)
from ovrsisbench.models.common.checkpoint import CheckpointMismatchError
from ovrsisbench.models.common.dense_clip import (
    DenseCLIP,
    build_clip,
    embed_tokens,
    run_block,
)
from ovrsisbench.models.common.rsib import (
    RSIB_SCALE_FACTOR,
    TINY_RSIB_CONFIG,
    build_rsib,
    load_rsib_checkpoint,
    rsib_intermediate,
    rsib_pos_embed,
    rsib_state_from_checkpoint,
)
from ovrsisbench.models.common.split_attention import (
    SplitQKVAttention,
    fuse_split_state_dict,
    load_split_from_fused,
    set_clip_finetune_attention,
    split_fused_state_dict,
    split_qkv,
)

# -- spec param_counts.md 1.9.3, prefixes stripped (`{i}` = block index, last column = count) --
SPEC_CLIP_B16_KEYS = """
positional_embedding                                 [77,512]         1
text_projection                                      [512,512]        1
logit_scale                                          []               1
visual.class_embedding                               [768]            1
visual.positional_embedding                          [197,768]        1
visual.proj                                          [768,512]        1
visual.conv1.weight                                  [768,3,16,16]    1
visual.ln_pre.weight                                 [768]            1
visual.ln_pre.bias                                   [768]            1
visual.transformer.resblocks.{i}.attn.q_proj_weight  [768,768]        12
visual.transformer.resblocks.{i}.attn.k_proj_weight  [768,768]        12
visual.transformer.resblocks.{i}.attn.v_proj_weight  [768,768]        12
visual.transformer.resblocks.{i}.attn.in_proj_bias   [2304]           12
visual.transformer.resblocks.{i}.attn.out_proj.weight [768,768]        12
visual.transformer.resblocks.{i}.attn.out_proj.bias  [768]            12
visual.transformer.resblocks.{i}.ln_1.weight         [768]            12
visual.transformer.resblocks.{i}.ln_1.bias           [768]            12
visual.transformer.resblocks.{i}.mlp.c_fc.weight     [3072,768]       12
visual.transformer.resblocks.{i}.mlp.c_fc.bias       [3072]           12
visual.transformer.resblocks.{i}.mlp.c_proj.weight   [768,3072]       12
visual.transformer.resblocks.{i}.mlp.c_proj.bias     [768]            12
visual.transformer.resblocks.{i}.ln_2.weight         [768]            12
visual.transformer.resblocks.{i}.ln_2.bias           [768]            12
visual.ln_post.weight                                [768]            1
visual.ln_post.bias                                  [768]            1
transformer.resblocks.{i}.attn.q_proj_weight         [512,512]        12
transformer.resblocks.{i}.attn.k_proj_weight         [512,512]        12
transformer.resblocks.{i}.attn.v_proj_weight         [512,512]        12
transformer.resblocks.{i}.attn.in_proj_bias          [1536]           12
transformer.resblocks.{i}.attn.out_proj.weight       [512,512]        12
transformer.resblocks.{i}.attn.out_proj.bias         [512]            12
transformer.resblocks.{i}.ln_1.weight                [512]            12
transformer.resblocks.{i}.ln_1.bias                  [512]            12
transformer.resblocks.{i}.mlp.c_fc.weight            [2048,512]       12
transformer.resblocks.{i}.mlp.c_fc.bias              [2048]           12
transformer.resblocks.{i}.mlp.c_proj.weight          [512,2048]       12
transformer.resblocks.{i}.mlp.c_proj.bias            [512]            12
transformer.resblocks.{i}.ln_2.weight                [512]            12
transformer.resblocks.{i}.ln_2.bias                  [512]            12
token_embedding.weight                               [49408,512]      1
ln_final.weight                                      [512]            1
ln_final.bias                                        [512]            1
"""

SPEC_REMOTE_KEYS = """
positional_embedding                                 [77,512]         1
text_projection                                      [512,512]        1
logit_scale                                          []               1
visual.class_embedding                               [768]            1
visual.positional_embedding                          [50,768]         1
visual.proj                                          [768,512]        1
visual.conv1.weight                                  [768,3,32,32]    1
visual.ln_pre.weight                                 [768]            1
visual.ln_pre.bias                                   [768]            1
visual.transformer.resblocks.{i}.attn.q_proj_weight  [768,768]        12
visual.transformer.resblocks.{i}.attn.k_proj_weight  [768,768]        12
visual.transformer.resblocks.{i}.attn.v_proj_weight  [768,768]        12
visual.transformer.resblocks.{i}.attn.in_proj_bias   [2304]           12
visual.transformer.resblocks.{i}.attn.out_proj.weight [768,768]        12
visual.transformer.resblocks.{i}.attn.out_proj.bias  [768]            12
visual.transformer.resblocks.{i}.ln_1.weight         [768]            12
visual.transformer.resblocks.{i}.ln_1.bias           [768]            12
visual.transformer.resblocks.{i}.mlp.c_fc.weight     [3072,768]       12
visual.transformer.resblocks.{i}.mlp.c_fc.bias       [3072]           12
visual.transformer.resblocks.{i}.mlp.c_proj.weight   [768,3072]       12
visual.transformer.resblocks.{i}.mlp.c_proj.bias     [768]            12
visual.transformer.resblocks.{i}.ln_2.weight         [768]            12
visual.transformer.resblocks.{i}.ln_2.bias           [768]            12
visual.ln_post.weight                                [768]            1
visual.ln_post.bias                                  [768]            1
transformer.resblocks.{i}.attn.q_proj_weight         [512,512]        12
transformer.resblocks.{i}.attn.k_proj_weight         [512,512]        12
transformer.resblocks.{i}.attn.v_proj_weight         [512,512]        12
transformer.resblocks.{i}.attn.in_proj_bias          [1536]           12
transformer.resblocks.{i}.attn.out_proj.weight       [512,512]        12
transformer.resblocks.{i}.attn.out_proj.bias         [512]            12
transformer.resblocks.{i}.ln_1.weight                [512]            12
transformer.resblocks.{i}.ln_1.bias                  [512]            12
transformer.resblocks.{i}.mlp.c_fc.weight            [2048,512]       12
transformer.resblocks.{i}.mlp.c_fc.bias              [2048]           12
transformer.resblocks.{i}.mlp.c_proj.weight          [512,2048]       12
transformer.resblocks.{i}.mlp.c_proj.bias            [512]            12
transformer.resblocks.{i}.ln_2.weight                [512]            12
transformer.resblocks.{i}.ln_2.bias                  [512]            12
token_embedding.weight                               [49408,512]      1
ln_final.weight                                      [512]            1
ln_final.bias                                        [512]            1
"""

SPEC_DINO_KEYS = """
cls_token                                            [1,1,768]        1
pos_embed                                            [1,785,768]      1
patch_embed.proj.weight                              [768,3,8,8]      1
patch_embed.proj.bias                                [768]            1
blocks.{i}.norm1.weight                              [768]            12
blocks.{i}.norm1.bias                                [768]            12
blocks.{i}.attn.qkv.weight                           [2304,768]       12
blocks.{i}.attn.qkv.bias                             [2304]           12
blocks.{i}.attn.proj.weight                          [768,768]        12
blocks.{i}.attn.proj.bias                            [768]            12
blocks.{i}.norm2.weight                              [768]            12
blocks.{i}.norm2.bias                                [768]            12
blocks.{i}.mlp.fc1.weight                            [3072,768]       12
blocks.{i}.mlp.fc1.bias                              [3072]           12
blocks.{i}.mlp.fc2.weight                            [768,3072]       12
blocks.{i}.mlp.fc2.bias                              [768]            12
norm.weight                                          [768]            1
norm.bias                                            [768]            1
"""

SPEC_CLIP_L14_KEYS = """
positional_embedding                                 [77,768]         1
text_projection                                      [768,768]        1
logit_scale                                          []               1
visual.class_embedding                               [1024]           1
visual.positional_embedding                          [577,1024]       1
visual.proj                                          [1024,768]       1
visual.conv1.weight                                  [1024,3,14,14]   1
visual.ln_pre.weight                                 [1024]           1
visual.ln_pre.bias                                   [1024]           1
visual.transformer.resblocks.{i}.attn.q_proj_weight  [1024,1024]      24
visual.transformer.resblocks.{i}.attn.k_proj_weight  [1024,1024]      24
visual.transformer.resblocks.{i}.attn.v_proj_weight  [1024,1024]      24
visual.transformer.resblocks.{i}.attn.in_proj_bias   [3072]           24
visual.transformer.resblocks.{i}.attn.out_proj.weight [1024,1024]      24
visual.transformer.resblocks.{i}.attn.out_proj.bias  [1024]           24
visual.transformer.resblocks.{i}.ln_1.weight         [1024]           24
visual.transformer.resblocks.{i}.ln_1.bias           [1024]           24
visual.transformer.resblocks.{i}.mlp.c_fc.weight     [4096,1024]      24
visual.transformer.resblocks.{i}.mlp.c_fc.bias       [4096]           24
visual.transformer.resblocks.{i}.mlp.c_proj.weight   [1024,4096]      24
visual.transformer.resblocks.{i}.mlp.c_proj.bias     [1024]           24
visual.transformer.resblocks.{i}.ln_2.weight         [1024]           24
visual.transformer.resblocks.{i}.ln_2.bias           [1024]           24
visual.ln_post.weight                                [1024]           1
visual.ln_post.bias                                  [1024]           1
transformer.resblocks.{i}.attn.q_proj_weight         [768,768]        12
transformer.resblocks.{i}.attn.k_proj_weight         [768,768]        12
transformer.resblocks.{i}.attn.v_proj_weight         [768,768]        12
transformer.resblocks.{i}.attn.in_proj_bias          [2304]           12
transformer.resblocks.{i}.attn.out_proj.weight       [768,768]        12
transformer.resblocks.{i}.attn.out_proj.bias         [768]            12
transformer.resblocks.{i}.ln_1.weight                [768]            12
transformer.resblocks.{i}.ln_1.bias                  [768]            12
transformer.resblocks.{i}.mlp.c_fc.weight            [3072,768]       12
transformer.resblocks.{i}.mlp.c_fc.bias              [3072]           12
transformer.resblocks.{i}.mlp.c_proj.weight          [768,3072]       12
transformer.resblocks.{i}.mlp.c_proj.bias            [768]            12
transformer.resblocks.{i}.ln_2.weight                [768]            12
transformer.resblocks.{i}.ln_2.bias                  [768]            12
token_embedding.weight                               [49408,768]      1
ln_final.weight                                      [768]            1
ln_final.bias                                        [768]            1
"""

PROMPTS = ["A photo of a building in the scene", "A photo of a road in the scene", "tree"]
META = torch.device("meta")


def expand(spec: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a spec key table."""
    keys: dict[str, tuple[int, ...]] = {}
    for line in spec.strip().splitlines():
        name, shape, count = line.split()
        dims = tuple(int(d) for d in shape.strip("[]").split(",") if d)
        if "{i}" in name:
            keys.update({name.replace("{i}", str(i)): dims for i in range(int(count))})
        else:
            assert count == "1"
            keys[name] = dims
    return keys


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def numel(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


def tiny_pair(seed: int = 0) -> tuple[open_clip.CLIP, open_clip.CLIP]:
    """A tiny random OpenAI-style CLIP (fused attention, 4 image / 2 text blocks, width 32) and
    its split copy."""
    torch.manual_seed(seed)
    fused = build_clip(TINY_CATSEG_CONFIG)
    return fused, split_qkv(copy.deepcopy(fused))


@pytest.fixture
def no_mha_fastpath():
    """Make fused nn.MultiheadAttention take PyTorch's standard path under no_grad too (its
    inference fast path is another kernel; the split module always takes the standard path)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(enabled)


# -- split attention --------------------------------------------------------------------------
def test_split_state_dict_names_order_and_values():
    fused, split = tiny_pair()
    fused_state, split_state = fused.state_dict(), split.state_dict()
    assert not any(key.endswith("in_proj_weight") for key in split_state)
    converted = split_fused_state_dict(fused_state)
    assert list(split_state) == list(converted)
    assert all(torch.equal(split_state[key], value) for key, value in converted.items())
    for tower in ("visual.transformer", "transformer"):
        prefix = f"{tower}.resblocks.0.attn."
        assert [key.removeprefix(prefix) for key in split_state if key.startswith(prefix)] == [
            "q_proj_weight",
            "k_proj_weight",
            "v_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias",
        ]
        weight = fused_state[prefix + "in_proj_weight"]
        assert torch.equal(split_state[prefix + "q_proj_weight"], weight[:32])
        assert torch.equal(split_state[prefix + "k_proj_weight"], weight[32:64])
        assert torch.equal(split_state[prefix + "v_proj_weight"], weight[64:])
    back = fuse_split_state_dict(split_state)
    assert list(back) == list(fused_state)
    assert all(torch.equal(back[key], fused_state[key]) for key in fused_state)
    with pytest.raises(ValueError, match="incomplete"):
        fuse_split_state_dict({"blk.attn.q_proj_weight": torch.zeros(2, 2)})


def test_split_clip_equals_fused_image_and_text_towers(no_mha_fastpath):
    fused, split = tiny_pair()
    for block in (*split.visual.transformer.resblocks, *split.transformer.resblocks):
        assert isinstance(block.attn, SplitQKVAttention)
    images = torch.randn(2, 3, 64, 64)
    tokens = open_clip.tokenize(PROMPTS)  # the text tower runs with its causal mask
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert torch.equal(split.encode_image(images), fused.encode_image(images))
            assert torch.equal(split.encode_text(tokens), fused.encode_text(tokens))
            assert torch.equal(encode_text(split, tokens), fused.encode_text(tokens))


def test_split_clip_close_to_fused_fast_path():
    fused, split = tiny_pair()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split.encode_image(images), fused.encode_image(images))


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_module_equals_fused_module_with_masks(batch_first, no_mha_fastpath):
    torch.manual_seed(0)
    fused = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    nn.init.normal_(fused.in_proj_bias)
    split = SplitQKVAttention.from_fused(fused)
    assert split.batch_first == batch_first and split.in_proj_weight is None
    x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    for mask in (None, causal, causal.isinf()):
        out_fused, weights_fused = fused(x, x, x, need_weights=True, attn_mask=mask)
        out_split, weights_split = split(x, x, x, need_weights=True, attn_mask=mask)
        assert torch.equal(out_split, out_fused)
        assert torch.equal(weights_split, weights_fused)
    fused(x, x, x, need_weights=False, attn_mask=causal)[0].square().sum().backward()
    split(x, x, x, need_weights=False, attn_mask=causal)[0].square().sum().backward()
    for name, grad in zip("qkv", fused.in_proj_weight.grad.chunk(3), strict=True):
        torch.testing.assert_close(getattr(split, f"{name}_proj_weight").grad, grad)
    torch.testing.assert_close(split.in_proj_bias.grad, fused.in_proj_bias.grad)


def test_split_bare_vision_transformer(no_mha_fastpath):
    fused, _ = tiny_pair()
    visual = copy.deepcopy(fused.visual)
    assert split_qkv(visual) is visual
    assert all(isinstance(b.attn, SplitQKVAttention) for b in visual.transformer.resblocks)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(visual(images), fused.visual(images))
    assert split_qkv(visual) is visual  # already split: unchanged


def test_load_split_from_fused_and_strictness(no_mha_fastpath):
    fused, _ = tiny_pair(0)
    torch.manual_seed(1)
    model = build_catseg_clip(TINY_CATSEG_CONFIG)
    load_split_from_fused(model, fused.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), fused.encode_image(images))
    load_split_from_fused(model, model.state_dict())  # already split names load too
    state = fused.state_dict()
    del state["visual.proj"]
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as error:
        load_split_from_fused(model, state)
    assert "missing keys: visual.proj" in str(error.value)
    assert "unexpected keys: bogus.weight" in str(error.value)


# -- fine-tuning rule 7.1 ---------------------------------------------------------------------
def test_finetune_rule_trains_only_q_and_v_of_both_towers():
    fused, split = tiny_pair()
    count = set_clip_finetune_attention(split)
    trainable = {name for name, param in split.named_parameters() if param.requires_grad}
    assert trainable == {
        f"{tower}transformer.resblocks.{i}.attn.{w}_proj_weight"
        for tower, layers in (("visual.", 4), ("", 2))
        for i in range(layers)
        for w in "qv"
    }
    assert count == 2 * 32 * 32 * 4 + 2 * 32 * 32 * 2
    with pytest.raises(ValueError, match="split_qkv"):
        set_clip_finetune_attention(fused)


def test_finetune_gradients_and_zero_grad_of_last_block_q():
    _, split = tiny_pair()
    set_clip_finetune_attention(split)
    split.train()
    dense, maps = dense_forward(split, torch.randn(2, 3, 64, 64), hooks=(1,))
    text = encode_text(split, open_clip.tokenize(PROMPTS))
    (dense.square().mean() + maps[0].mean() + text.square().mean()).backward()
    for name, param in split.named_parameters():
        assert (param.grad is None) != param.requires_grad, name
    first, last = (
        split.visual.transformer.resblocks[0].attn,
        split.visual.transformer.resblocks[-1].attn,
    )
    assert first.q_proj_weight.grad.any() and last.v_proj_weight.grad.any()
    # as in the official forward_dense: q of the last image block gets an exactly-zero gradient
    assert not last.q_proj_weight.grad.any()
    assert split.transformer.resblocks[0].attn.q_proj_weight.grad.any()


@pytest.mark.parametrize(
    ("arch", "total", "visual", "trainable"),
    [
        ("ViT-B/16", 149_620_737, 86_192_640, 20_447_232),
        ("ViT-L/14@336px", 427_944_193, 304_293_888, 64_487_424),
    ],
)
def test_full_clip_counts_on_meta(arch, total, visual, trainable):
    clip = build_catseg_clip(arch, device=META)
    assert all(param.is_meta for param in clip.parameters())
    assert numel(clip) == total
    assert numel(clip.visual) == visual
    assert isinstance(
        clip.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
    )
    assert isinstance(clip.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert set_clip_finetune_attention(clip) == trainable


# -- key names and shapes (spec 1.9.3) and backbone counts (spec 1.4, 1.7) ---------------------
def test_clip_keys_match_spec():
    assert shapes(build_catseg_clip("ViT-B/16", device=META)) == expand(SPEC_CLIP_B16_KEYS)
    assert shapes(build_catseg_clip("ViT-L/14@336px", device=META)) == expand(SPEC_CLIP_L14_KEYS)


def test_remoteclip_built_plus_unused_is_the_full_checkpoint():
    remote = build_remoteclip(device=META)
    built = shapes(remote)
    spec = expand(SPEC_REMOTE_KEYS)
    assert set(built).isdisjoint(remote.unused_keys)
    assert {**built, **remote.unused_keys} == spec
    assert remote.unused_keys == remoteclip_unused_keys(8)
    assert len(remote.visual.transformer.resblocks) == 8 and remote.visual.proj is None
    unused_visual = {key for key in remote.unused_keys if key.startswith("visual.")}
    assert unused_visual == {"visual.proj", "visual.ln_post.weight", "visual.ln_post.bias"} | {
        key
        for key in spec
        if key.startswith(tuple(f"visual.transformer.resblocks.{i}." for i in range(8, 12)))
    }
    unused_numel = sum(math.prod(shape) for shape in remote.unused_keys.values())
    assert numel(remote) == 59_102_976  # param_counts.md 1.7: RemoteCLIP visual used
    assert unused_numel == 63_428_097 + 28_746_240  # text tower + blocks 8-11, ln_post, proj
    assert numel(remote) + unused_numel == 151_277_313
    fused = remoteclip_unused_keys(8, fused=True)
    assert "transformer.resblocks.0.attn.in_proj_weight" in fused
    assert not any("q_proj" in key for key in fused)


def test_rsib_keys_and_count_match_spec():
    model = build_rsib(device=META)
    assert shapes(model) == expand(SPEC_DINO_KEYS)
    assert numel(model) == 85_807_872
    assert all(isinstance(m, nn.Identity) for m in (model.head, model.fc_norm))
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6


def test_full_size_output_shapes_on_meta():
    images = torch.empty(2, 3, 384, 384, device=META)
    clip_b = build_catseg_clip("ViT-B/16", device=META)
    dense, maps = dense_forward(clip_b, images, hooks=(3, 7))
    assert dense.shape == (2, 512, 24, 24)
    assert [m.shape for m in maps] == [(2, 768, 24, 24)] * 2
    assert encode_text(clip_b, open_clip.tokenize(PROMPTS).to(META)).shape == (3, 512)
    clip_l = build_catseg_clip("ViT-L/14@336px", device=META)
    dense, maps = dense_forward(clip_l, torch.empty(2, 3, 336, 336, device=META), hooks=(7, 15))
    assert dense.shape == (2, 768, 24, 24)
    assert [m.shape for m in maps] == [(2, 1024, 24, 24)] * 2
    remote = build_remoteclip(device=META)
    maps = remote_hooks(remote, torch.empty(2, 3, 768, 768, device=META))
    assert [m.shape for m in maps] == [(2, 768, 24, 24)] * 2
    maps = rsib_intermediate(build_rsib(device=META), images)
    assert [m.shape for m in maps] == [(2, 768, 48, 48)] * 3


# -- Cat-Seg dense forward ----------------------------------------------------------------------
def reference_dense(fused: open_clip.CLIP, images: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Slow Cat-Seg dense encoding written out from spec 5.2, on the fused (unsplit) model."""
    visual = fused.visual
    width, patch = visual.conv1.out_channels, visual.patch_size[0]
    batch, _, height, wide = images.shape
    h, w = height // patch, wide // patch
    cells = images.unfold(2, patch, patch).unfold(3, patch, patch)  # B, 3, h, w, p, p
    x = torch.einsum("bchwij,dcij->bhwd", cells, visual.conv1.weight).reshape(batch, h * w, width)
    gh, gw = visual.grid_size
    pos = visual.positional_embedding
    grid = pos[1:].reshape(1, gh, gw, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:1], grid.reshape(width, h * w).T])
    x = torch.cat([visual.class_embedding.expand(batch, 1, width), x], dim=1) + pos
    x = visual.ln_pre(x)
    raw = []
    for block in visual.transformer.resblocks[:-1]:
        x = run_block(block, x)
        raw.append(x[:, 1:].reshape(batch, h, w, width).permute(0, 3, 1, 2))
    block = visual.transformer.resblocks[-1]

    def layer_norm(t, ln):
        return F.layer_norm(t, (width,), ln.weight, ln.bias, ln.eps)

    y = layer_norm(x, block.ln_1)
    v = y @ block.attn.in_proj_weight[2 * width :].T + block.attn.in_proj_bias[2 * width :]
    t = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias + x[:, :1]
    hidden = layer_norm(t, block.ln_2) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    t = t + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
    out = layer_norm(t, visual.ln_post) @ visual.proj
    return out[:, 1:].reshape(batch, h, w, -1).permute(0, 3, 1, 2), raw


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 112)])
def test_dense_forward_matches_slow_reference(size, no_mha_fastpath):
    fused, split = tiny_pair()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        dense, maps = dense_forward(split, images, hooks=(0, 2))
        expected, raw = reference_dense(fused, images)
        intermediate = DenseCLIP(fused).intermediate(images, [0, 2])
    grid = (size[0] // 16, size[1] // 16)
    assert dense.shape == (2, 24, *grid)
    assert [m.shape for m in maps] == [(2, 32, *grid)] * 2
    torch.testing.assert_close(dense, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps[0], raw[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps[1], raw[2], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(maps, intermediate, strict=True))
    # the dense block really replaces the last block: it differs from the normal forward
    with torch.no_grad():
        tokens, _ = embed_tokens(split.visual, images)
        normal = split.visual.ln_post(split.visual.transformer(tokens)) @ split.visual.proj
    assert not torch.allclose(normal[:, 1:].transpose(1, 2).reshape(dense.shape), dense)


def test_dense_forward_accepts_image_tower_and_checks_inputs(no_mha_fastpath):
    fused, split = tiny_pair()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = dense_forward(split, images, hooks=())
        b = dense_forward(split.visual, images, hooks=())
        c = dense_forward(fused, images, hooks=())  # an unsplit model works too
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and a[1] == b[1] == []
    with pytest.raises(ValueError, match="outside"):
        dense_forward(split, images, hooks=(3,))  # the last (dense) block cannot be hooked
    with torch.no_grad():  # sides not multiples of the patch: zero-padded (as DenseCLIP)
        padded = dense_forward(split, torch.randn(1, 3, 60, 64), hooks=())[0]
    assert padded.shape[-2:] == (4, 4)


def test_four_rotation_batch_equals_separate_forwards():
    """RS-CMA runs CLIP on I and its three rot90 versions; batching them must not change any
    pass (positional embeddings break rotation equivariance, so no equivariance is asserted)."""
    _, split = tiny_pair()
    image = torch.randn(1, 3, 96, 96)
    rotated = [torch.rot90(image, k, dims=(2, 3)) for k in range(4)]
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            dense, maps = dense_forward(split, torch.cat(rotated), hooks=(1, 2))
            for k, single in enumerate(rotated):
                one_dense, one_maps = dense_forward(split, single, hooks=(1, 2))
                assert torch.equal(dense[k : k + 1], one_dense)
                assert all(
                    torch.equal(m[k : k + 1], o) for m, o in zip(maps, one_maps, strict=True)
                )
    aligned = torch.rot90(dense[1:2], 3, dims=(2, 3))  # rotated back, spatially aligned
    assert aligned.shape == dense[:1].shape


def test_encode_text_matches_open_clip(no_mha_fastpath):
    fused, split = tiny_pair()
    tokens = open_clip.tokenize(PROMPTS)
    with torch.no_grad():
        out = encode_text(split, tokens)
    assert out.shape == (3, 24)
    assert torch.equal(out, fused.encode_text(tokens))


# -- RemoteCLIP -------------------------------------------------------------------------------
def test_remoteclip_truncated_hooks_and_loading(no_mha_fastpath):
    torch.manual_seed(0)
    full = build_clip(TINY_CATSEG_CONFIG)  # 4 image blocks; fused open_clip names
    remote = build_remoteclip(depth=3, arch=TINY_CATSEG_CONFIG)
    assert len(remote.visual.transformer.resblocks) == 3
    assert isinstance(remote.visual.ln_post, nn.Identity) and remote.visual.proj is None
    dropped = load_remoteclip_weights(remote, full.state_dict())
    assert (
        set(dropped)
        == set(remote.unused_keys)
        == set(remoteclip_unused_keys(3, TINY_CATSEG_CONFIG))
    )
    images = torch.randn(2, 3, 128, 128)  # 8x8 grid, positional embedding resized from 4x4
    with torch.no_grad():
        maps = remote_hooks(remote, images, hooks=(1, 2))
        expected = DenseCLIP(full).intermediate(images, [1, 2])
    assert [m.shape for m in maps] == [(2, 32, 8, 8)] * 2
    assert all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))
    load_remoteclip_weights(remote, split_fused_state_dict(full.state_dict()))  # RSKT names
    state = full.state_dict()
    del state["visual.transformer.resblocks.0.attn.out_proj.bias"]
    state["visual.bogus"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as error:
        load_remoteclip_weights(remote, state)
    assert "missing keys: visual.transformer.resblocks.0.attn.out_proj.bias" in str(error.value)
    assert "unexpected keys: visual.bogus" in str(error.value)
    state = full.state_dict()
    state["visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError, match="visual.proj"):
        load_remoteclip_weights(remote, state)
    with pytest.raises(ValueError, match="outside"):
        remote_hooks(remote, images, hooks=(3,))


# -- DINO RSIB --------------------------------------------------------------------------------
def test_rsib_pos_embed_uses_the_hard_coded_scale_factor():
    assert RSIB_SCALE_FACTOR == 48.1 / 28 == (48 + 0.1) / 28
    torch.manual_seed(0)
    pos = torch.randn(1, 785, 8)
    grid = pos[:, 1:].reshape(1, 28, 28, 8).permute(0, 3, 1, 2)
    out = rsib_pos_embed(pos, (48, 48))
    by_scale = F.interpolate(
        grid, scale_factor=1.717857142857143, mode="bicubic", align_corners=False
    )
    by_size = F.interpolate(grid, size=(48, 48), mode="bicubic", align_corners=False)
    assert out.shape == (1, 1 + 48 * 48, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.equal(out[:, 1:], by_scale.flatten(2).transpose(1, 2))
    assert not torch.allclose(by_scale, by_size, atol=1e-3)  # the two mappings differ
    assert rsib_pos_embed(pos, (28, 28)) is pos
    # other grids: DINO v1's (g + 0.1) / 28 per side
    out = rsib_pos_embed(pos, (40, 56))
    general = F.interpolate(
        grid, scale_factor=(40.1 / 28, 56.1 / 28), mode="bicubic", align_corners=False
    )
    assert torch.equal(out[:, 1:], general.flatten(2).transpose(1, 2))


def test_rsib_intermediate_384_uses_scaled_pos_embed():
    torch.manual_seed(0)
    model = build_rsib(TINY_RSIB_CONFIG)
    images = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        maps = rsib_intermediate(model, images, indices=(1, 3))
        # slow reference: conv patches, CLS, scale-factor positional embedding, blocks, final norm
        x = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)
        grid = model.pos_embed[:, 1:].reshape(1, 28, 28, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=RSIB_SCALE_FACTOR, mode="bicubic", align_corners=False
        )
        x = x + torch.cat([model.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        expected = []
        for block in model.blocks:
            x = block(x)
            expected.append(model.norm(x)[:, 1:].transpose(1, 2).reshape(2, 32, 48, 48))
    assert [m.shape for m in maps] == [(2, 32, 48, 48)] * 2
    assert torch.equal(maps[0], expected[1]) and torch.equal(maps[1], expected[3])


def test_rsib_intermediate_matches_timm_at_native_size():
    torch.manual_seed(0)
    model = build_rsib(TINY_RSIB_CONFIG)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        maps = rsib_intermediate(model, images, indices=(0, 3))
        timm_maps = model.forward_intermediates(
            images, indices=[0, 3], norm=True, output_fmt="NCHW", intermediates_only=True
        )
    assert all(torch.equal(a, b) for a, b in zip(maps, timm_maps, strict=True))
    with pytest.raises(ValueError, match="outside"):
        rsib_intermediate(model, images, indices=(4,))


def test_load_rsib_checkpoint_teacher_prefixes_and_strictness(tmp_path):
    torch.manual_seed(0)
    source = build_rsib(TINY_RSIB_CONFIG)
    teacher = {f"module.backbone.{key}": value for key, value in source.state_dict().items()}
    teacher["module.head.last_layer.weight_g"] = torch.ones(1, 4)
    path = tmp_path / "rsib.pth"
    torch.save({"teacher": teacher, "student": {"x": torch.zeros(1)}, "epoch": 3}, path)
    state, ignored = rsib_state_from_checkpoint(path)
    assert ignored == ["head.last_layer.weight_g"]
    assert list(state) == list(source.state_dict())
    model = load_rsib_checkpoint(path, model=build_rsib(TINY_RSIB_CONFIG))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    plain = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    load_rsib_checkpoint(plain, model=build_rsib(TINY_RSIB_CONFIG))  # no "teacher" entry
    bad = dict(source.state_dict())
    del bad["norm.weight"]
    bad["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as error:
        load_rsib_checkpoint(bad, model=build_rsib(TINY_RSIB_CONFIG))
    assert "missing keys: norm.weight" in str(error.value)
    assert "unexpected keys: blocks.0.attn.extra" in str(error.value)
    pickled = tmp_path / "dino_train.pth"
    torch.save({"teacher": teacher, "args": argparse.Namespace(arch="vit_base")}, pickled)
    load_rsib_checkpoint(pickled, model=build_rsib(TINY_RSIB_CONFIG))  # weights_only still
    evil = tmp_path / "evil.pth"
    torch.save({"teacher": teacher, "other": Path("x")}, evil)  # any other class is refused
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_rsib_checkpoint(evil, model=build_rsib(TINY_RSIB_CONFIG))
