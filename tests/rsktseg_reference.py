"""A second, deliberately literal RSKT-Seg forward written from the ORIGINAL code's structure
(token-first CLIP blocks through ``F.multi_head_attention_forward`` with separate q/k/v, Cat-Seg's
dense last block, DINO v1's ``prepare_tokens`` / ``get_intermediate_layers``, the RSKT decoder,
aggregator and upsampling), reading its weights from an ``RSKTSeg``. Test oracle only: any
wiring difference of the real model (guidance order, hooks, indices, rotations, costs) shows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _to_map(tokens, side):  # (B, 1 + s*s, C) -> (B, C, s, s), CLS dropped
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


def _clip_block(block, x):  # token-first (L, N, D), as the original CLIP
    a = block.attn
    y = block.ln_1(x)
    out = F.multi_head_attention_forward(
        y, y, y, a.embed_dim, a.num_heads, None, a.in_proj_bias, None, None, False, 0.0,
        a.out_proj.weight, a.out_proj.bias, training=False, need_weights=False,
        use_separate_proj_weight=True, q_proj_weight=a.q_proj_weight,
        k_proj_weight=a.k_proj_weight, v_proj_weight=a.v_proj_weight,
    )[0]  # fmt: skip
    x = x + out
    return x + block.mlp(block.ln_2(x))


def _clip_dense_block(block, x):  # Cat-Seg: out_proj of v, plus the CLS input, then the MLP
    a = block.attn
    qkv = F.linear(block.ln_1(x), torch.cat([a.q_proj_weight, a.k_proj_weight, a.v_proj_weight]),
                   a.in_proj_bias)  # fmt: skip
    v = F.linear(qkv[..., 2 * x.shape[-1] :], a.out_proj.weight, a.out_proj.bias) + x[:1]
    return v + block.mlp(block.ln_2(v))


def encode_image(visual, image, hooks, dense=True):
    """(B, 1 + s*s, C_out) dense tokens (or None) and the hooked token-first blocks."""
    x = visual.conv1(image).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    pos = visual.positional_embedding
    if x.shape[1] != pos.shape[0]:
        old, new = math.isqrt(pos.shape[0] - 1), math.isqrt(x.shape[1] - 1)
        grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid[0].reshape(pos.shape[1], -1).T])
    x = visual.ln_pre(x + pos).permute(1, 0, 2)
    blocks, saved = visual.transformer.resblocks, []
    for index, block in enumerate(blocks):
        if dense and index == len(blocks) - 1:
            x = _clip_dense_block(block, x)
        else:
            x = _clip_block(block, x)
        if index in hooks:
            saved.append(x)
    x = x.permute(1, 0, 2)
    return (visual.ln_post(x) @ visual.proj if dense else None), saved


def dino_layers(dino, image):
    """Every block's output through the final norm (DINO v1 ``get_intermediate_layers``)."""
    batch, _, height, width = image.shape
    x = dino.patch_embed.proj(image).flatten(2).transpose(1, 2)
    x = torch.cat([dino.cls_token.expand(batch, -1, -1), x], 1)
    n = dino.pos_embed.shape[1] - 1
    side = math.sqrt(n)
    if x.shape[1] - 1 == n and height == width:
        pos = dino.pos_embed
    else:
        w0, h0 = width // 8 + 0.1, height // 8 + 0.1
        grid = dino.pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
        pos = torch.cat(
            [dino.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, x.shape[-1])], 1
        )
    x, out = x + pos, []
    for block in dino.blocks:
        a = block.attn
        y = block.norm1(x)
        b, t, c = y.shape
        q, k, v = a.qkv(y).reshape(b, t, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * a.scale).softmax(-1)
        x = x + a.proj((attention @ v).transpose(1, 2).reshape(b, t, c))
        x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
        out.append(dino.norm(x))
    return out


def _attention(q, k, v, heads):
    b, n, c = q.shape
    q, k, v = (t.reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def _aggregator_layer(layer, x, appearance, text):
    b, c, t, h, w = x.shape
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    guide = appearance.repeat_interleave(t, 0).flatten(2).transpose(1, 2)
    sa = layer.spatial_fusion.sa
    tokens = x.flatten(2).transpose(1, 2)
    y, att = sa.norm1(tokens), sa.attention
    both = torch.cat([y, guide], -1)
    keys = att.norm_k(
        att.sr_k(both.transpose(1, 2).reshape(b * t, 2 * c, h, w)).flatten(2).transpose(1, 2)
    )
    values = att.norm_v(
        att.sr_v(y.transpose(1, 2).reshape(b * t, c, h, w)).flatten(2).transpose(1, 2)
    )
    tokens = tokens + att.proj(_attention(att.q(both), att.k(keys), att.v(values), 8))
    m, y = sa.mlp, sa.norm2(tokens)
    y = m.fc3(F.relu6(m.fc1(y)) * m.fc2(y))
    y = m.dwconv.dwconv(y.transpose(1, 2).reshape(b * t, c, h, w)).flatten(2).transpose(1, 2)
    x = (tokens + y).transpose(1, 2).reshape(b * t, c, h, w)
    identity = x
    pooled = F.avg_pool2d(x, 2)
    hp, wp = pooled.shape[-2:]
    z = pooled.reshape(b, t, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, t, c)
    guide = text.repeat_interleave(hp * wp, 0)
    sa = layer.class_fusion.sa
    y, att = sa.norm1(z), sa.attention
    both = torch.cat([y, guide], -1)
    z = z + att.proj(_attention(att.q(both), att.k(both), att.v(y), 8))
    m, y = sa.mlp, sa.norm2(z)
    z = z + F.relu6(m.fc3(F.relu6(m.fc1(y)) * m.fc2(y)))
    z = z.reshape(b, hp, wp, t, c).permute(0, 3, 4, 1, 2).reshape(b * t, c, hp, wp)
    x = identity + F.interpolate(z, size=(h, w), mode="bilinear", align_corners=True)
    return x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _upsample(stage, x, guides):
    x = stage.up(x)
    for guide in guides:
        x = torch.cat([x, guide.repeat_interleave(x.shape[0] // guide.shape[0], 0)], 1)
    return stage.conv(x)


def original_forward(model, images, text):
    """Logits (B, T, 4h, 4w) of CLIP-normalised padded ``images`` for text (T, C)."""
    cfg, d = model.config, model.decoder

    def squash(size):
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)

    clip_in = squash(cfg.clip_size)
    dino = dino_layers(model.dino, squash(cfg.dino_size))
    side = cfg.dino_size // 8
    dino_map = model.dino_down_sample(_to_map(dino[cfg.dino_indices[2]], side))
    dino_guide = [model.dino_decod_proj1(_to_map(dino[cfg.dino_indices[0]], side)),
                  model.dino_decod_proj2(_to_map(dino[cfg.dino_indices[1]], side))]  # fmt: skip
    dense, hooked = encode_image(model.clip.visual, clip_in, cfg.clip_hooks)
    grid = math.isqrt(dense.shape[1] - 1)
    token_first = lambda block: _to_map(block.permute(1, 0, 2), grid)  # noqa: E731
    clip_guide = [model.upsample1(token_first(hooked[0])), model.upsample2(token_first(hooked[1]))]
    passes = [dense] + [
        encode_image(model.clip.visual, torch.rot90(clip_in, k, (2, 3)), ())[0] for k in (1, 2, 3)
    ]
    _, remote = encode_image(
        model.remoteclip.visual, squash(cfg.remote_size), cfg.remote_hooks, dense=False
    )
    remote_guide = [
        model.upsample1_remote(token_first(remote[0])),
        model.upsample2_remote(token_first(remote[1])),
    ]
    maps = [F.normalize(_to_map(p, grid), dim=1) for p in passes]
    maps = [maps[0]] + [torch.rot90(maps[k], 4 - k, (2, 3)) for k in (1, 2, 3)]
    batch = images.shape[0]
    text4 = F.normalize(text, dim=-1)[None, :, None, :].repeat(batch, 1, 1, 1)  # (B, T, 1, C)
    cost = torch.einsum("bnchw,btpc->bnpthw", torch.stack(maps, 1), text4).flatten(1, 2)
    dino_cost = torch.einsum("bchw,btpc->bpthw", F.normalize(dino_map, dim=1), text4)
    t = text.shape[0]
    flat = lambda c: c.permute(0, 2, 1, 3, 4).reshape(batch * t, c.shape[1], grid, grid)  # noqa: E731
    e_clip = torch.sigmoid(d.conv1(flat(cost)))
    e_dino = torch.sigmoid(d.conv2(flat(dino_cost)))
    x = torch.sigmoid(d.fusion_corr(torch.cat([e_clip, e_dino], 1))) + e_clip
    x = x.reshape(batch, t, -1, grid, grid).permute(0, 2, 1, 3, 4)
    appearance = d.guidance_projection(_to_map(dense, grid))
    text_guide = d.text_guidance_projection(F.normalize(text4.mean(-2), dim=-1))
    for layer in d.layers:
        x = _aggregator_layer(layer, x, appearance, text_guide)
    x = x.permute(0, 2, 1, 3, 4).reshape(batch * t, -1, grid, grid)
    stage = lambda projections, guides: [p(g) for p, g in zip(projections, guides, strict=True)]  # noqa: E731
    clip_g = stage(d.CLIP_decoder_guidance_projection, clip_guide)
    remote_g = stage(d.CLIP_decoder_guidance_projection_remote, remote_guide)
    dino_g = stage(d.DINO_decoder_guidance_projection, dino_guide)
    x = _upsample(d.Fusiondecoder1, x, [clip_g[0], remote_g[0], dino_g[0]])
    x = _upsample(d.Fusiondecoder2, x, [clip_g[1], remote_g[1], dino_g[1]])
    return d.head(x).reshape(batch, t, *x.shape[-2:])
