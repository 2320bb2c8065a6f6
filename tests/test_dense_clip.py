"""The dense CLIP wrapper: shapes, the dense last block by hand, positional embeddings, loading."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ovrsisbench.models.common.checkpoint import CheckpointMismatchError
from ovrsisbench.models.common.dense_clip import (
    DENSE_MODES,
    OPENAI_METADATA_KEYS,
    TINY_VIT_CONFIG,
    DenseCLIP,
    build_clip,
    interpolate_pos_embed,
    read_clip_state_dict,
    resolve_pretrained,
    value_path,
)

OPENAI_KEY_SAMPLES = (  # key names of OpenAI's released CLIP state dicts
    "visual.conv1.weight",
    "visual.transformer.resblocks.0.attn.in_proj_weight",
    "visual.ln_post.weight",
    "visual.proj",
    "token_embedding.weight",
    "ln_final.weight",
    "text_projection",
    "logit_scale",
)


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return build_clip(TINY_VIT_CONFIG)


@pytest.fixture(scope="module")
def clip() -> open_clip.CLIP:
    return tiny_clip()


def to_openai_format(model: open_clip.CLIP) -> dict[str, torch.Tensor]:
    """What OpenAI's checkpoints hold: open_clip's key names (open_clip kept them), fp16 weights,
    plus three metadata entries."""
    state = {key: value.half() for key, value in model.state_dict().items()}
    assert set(OPENAI_KEY_SAMPLES) <= set(state)
    metadata = (model.visual.image_size[0], model.context_length, model.vocab_size)
    entries = zip(OPENAI_METADATA_KEYS, metadata, strict=True)
    return state | {key: torch.tensor(value) for key, value in entries}


def test_dense_shapes_follow_the_patch_grid(clip):
    dense = DenseCLIP(clip)
    assert dense.encode_dense(torch.randn(2, 3, 64, 96)).shape == (2, 32, 4, 6)
    assert dense.encode_dense(torch.randn(1, 3, 50, 70)).shape == (1, 32, 4, 5)  # padded up


def hand_dense(model: open_clip.CLIP, images: torch.Tensor, mode: str) -> torch.Tensor:
    """The dense last block written out from the block's weights (input at the native size)."""
    visual = model.visual
    x = visual._embeds(images)
    *body, last = visual.transformer.resblocks
    for block in body:
        x = block(x)
    width = x.shape[-1]
    y = F.layer_norm(x, (width,), last.ln_1.weight, last.ln_1.bias, last.ln_1.eps)
    v = y @ last.attn.in_proj_weight[2 * width :].T + last.attn.in_proj_bias[2 * width :]
    out = v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    residual = {"maskclip": x, "value": 0, "catseg": x[:, :1]}[mode]
    t = residual + out
    if mode != "value":
        t = t + last.mlp(F.layer_norm(t, (width,), last.ln_2.weight, last.ln_2.bias, last.ln_2.eps))
    t = F.layer_norm(t, (width,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
    tokens = (t @ visual.proj)[:, 1:]
    return tokens.transpose(1, 2).reshape(images.shape[0], -1, *visual.grid_size)


@pytest.mark.parametrize("mode", sorted(set(DENSE_MODES) - {"segearth"}))  # segearth: its own test
def test_dense_last_block_matches_hand_computation(clip, mode):
    images = torch.randn(2, 3, 64, 64)
    expected = hand_dense(clip, images, mode)
    torch.testing.assert_close(DenseCLIP(clip).encode_dense(images, mode), expected)


def test_value_path_is_attention_restricted_to_the_token_itself(clip):
    block = clip.visual.transformer.resblocks[-1]
    x = torch.randn(2, 17, 32)
    y = block.ln_1(x)
    self_only = torch.full((17, 17), float("-inf")).fill_diagonal_(0)
    attended = block.attn(y, y, y, attn_mask=self_only, need_weights=False)[0]
    torch.testing.assert_close(value_path(block, x), attended)


def test_unknown_dense_mode_is_refused(clip):
    with pytest.raises(ValueError, match="unknown dense mode"):
        DenseCLIP(clip).encode_dense(torch.randn(1, 3, 64, 64), "nope")


def test_pos_embed_interpolation_keeps_cls_and_native_grid(clip):
    pos = clip.visual.positional_embedding
    assert interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
    resized = interpolate_pos_embed(pos, (4, 4), (6, 3))
    assert resized.shape == (1 + 18, 32)
    torch.testing.assert_close(resized[0], pos[0])
    constant = torch.ones(17, 8)
    torch.testing.assert_close(interpolate_pos_embed(constant, (4, 4), (7, 5)), torch.ones(36, 8))


def test_intermediate_blocks_match_open_clip(clip):
    images = torch.randn(2, 3, 64, 64)
    reference = clip.visual.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    ours = DenseCLIP(clip).intermediate(images, [0, 1])
    for mine, theirs in zip(ours, reference["image_intermediates"], strict=True):
        torch.testing.assert_close(mine, theirs)
    features = DenseCLIP(clip)(images, blocks=[0])
    torch.testing.assert_close(features.blocks[0], ours[0])
    with pytest.raises(ValueError, match="outside"):
        DenseCLIP(clip)(images, blocks=[1])  # the last block is the dense one


def test_encode_text_matches_open_clip(clip):
    tokens = open_clip.SimpleTokenizer()(["a photo of a road.", "a ship"])
    torch.testing.assert_close(DenseCLIP(clip).encode_text(tokens), clip.encode_text(tokens))
    assert DenseCLIP(clip).encode_text(tokens).shape == (2, 32)


@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-L-14-336"])
def test_meta_build_has_open_clip_parameter_count(name):
    with torch.device("meta"):
        reference = open_clip.create_model(name, device="meta")
    model = build_clip(name, None, "meta", quick_gelu=True)
    count = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    if name == "ViT-B-16":
        assert count == 149_620_737  # OpenAI CLIP ViT-B/16


def test_openai_format_state_dict_loads_strictly(tmp_path):
    source = tiny_clip(seed=1)
    path = tmp_path / "openai.pt"
    torch.save(to_openai_format(source), path)
    loaded = build_clip(TINY_VIT_CONFIG, path)
    expected = source.state_dict()
    for key, ours in loaded.state_dict().items():
        torch.testing.assert_close(ours, expected[key].half().float(), msg=key)


def test_wrapped_and_safetensors_checkpoints_load(tmp_path):
    source = tiny_clip(seed=2)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    flat = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(flat))
    for path in (wrapped, flat):
        loaded = build_clip(TINY_VIT_CONFIG, path)
        torch.testing.assert_close(loaded.visual.proj, source.visual.proj)


def test_wrong_key_and_shape_fail_naming_them(tmp_path):
    state = tiny_clip().state_dict()
    state["visual.projection"] = state.pop("visual.proj")
    state["ln_final.weight"] = torch.zeros(5)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as error:
        build_clip(TINY_VIT_CONFIG, path)
    message = str(error.value)
    assert "missing keys: visual.proj" in message
    assert "unexpected keys: visual.projection" in message
    assert "ln_final.weight (5,) != (32,)" in message


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, still in use
def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ValueError, match="TorchScript"):
        read_clip_state_dict(path)


def test_pretrained_resolution_and_meta_refusal(tmp_path):
    with pytest.raises(ValueError, match="tags: .*openai"):
        resolve_pretrained("ViT-B-16", "no-such-tag")
    path = tmp_path / "w.pt"
    torch.save(tiny_clip().state_dict(), path)
    assert resolve_pretrained(TINY_VIT_CONFIG, path) == path
    with pytest.raises(ValueError, match="meta"):
        build_clip(TINY_VIT_CONFIG, path, "meta")


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_clip("ViT-Nope", None, "meta")
    with pytest.raises(ValueError, match="plain open_clip CLIP"):
        build_clip({**TINY_VIT_CONFIG, "custom_text": True}, None, "meta")
