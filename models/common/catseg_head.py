"""The CAT-Seg cost aggregator and the pieces the Cat-Seg family shares (Cat-Seg, OVRS, GSNet,
RSKT-Seg): cosine cost volumes, the guided Swin and class-attention layers, the upsampling
decoder.

Re-implemented from the description of cvlab-kaist/CAT-Seg ``cat_seg/modeling/transformer/
model.py`` (spec ``baselines.md`` 1.4) with the original module names, so that
``CatSegAggregator().state_dict()`` has exactly the original keys below the checkpoint prefix
``sem_seg_head.predictor.transformer.`` (``param_counts.md`` 2.4), the persistent ``attn_mask``
buffers of the shifted Swin blocks included.

Shapes (h, w = the CLIP cost grid, 24 x 24 for both released backbones; T classes; P prompts;
C = text and dense-CLIP width; D = ``hidden_dim`` = 128):

- cost: dense map (B, C, h, w) and text (B, T, P, C) -> cosine (B, P, T, h, w) -> ``conv1`` (7x7)
  per class -> (B, D, T, h, w);
- N x :class:`AggregatorLayer`: two Swin blocks on each class map (appearance guidance in Q and K
  only), then linear attention across the classes (padded to ``pad_len`` with learnable tokens)
  on an average-pooled grid, upsampled back and added;
- decoder on the B*T maps: (D, h, w) -> (64, 2h, 2w) -> (32, 4h, 4w) -> logits (B, T, 4h, 4w).

Initialisation: the original aggregator defines no ``_init_weights`` (unlike RSKT-Seg's
efficient aggregator, which uses trunc-normal Linears): every layer keeps PyTorch's default
initialisation, the Swin MLP timm's ``Mlp`` default, and the padding token and padding guidance
start at zero (checked against the original source, not against a released checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

#: Number of rotations (0, 90, 180, 270 degrees) stacked in a rotated cost (OVRS, RSKT-Seg).
NUM_ROTATIONS = 4
#: Widths of the two decoder guidance maps the meta-architecture feeds (``upsample1/2``).
DECODER_GUIDANCE_DIMS = (256, 128)
#: Class-attention variants of the original ``ATTENTION_TYPE``.
ATTENTION_TYPES = ("linear", "full")
#: The shifted-window mask value of the original (added before the softmax).
MASK_VALUE = -100.0


# -- costs ------------------------------------------------------------------------------------
def cosine_cost(features: Tensor, text: Tensor) -> Tensor:
    """Cosine cost (B, P, T, h, w) of a dense map (B, C, h, w) and text (B, T, P, C).

    Both sides are L2-normalised over C first (the original ``correlation``).
    """
    features = F.normalize(features, dim=1)
    text = F.normalize(text, dim=-1)
    return torch.einsum("bchw,btpc->bpthw", features, text)


def rotated_cosine_cost(features: Sequence[Tensor], text: Tensor) -> Tensor:
    """Cosine costs (B, 4P, T, h, w) of the four rotated CLIP passes (OVRS, RSKT-Seg RS-CMA).

    ``features[k]`` (B, C, h, w) is the dense map of the input rotated by ``rot90(k)``; it is
    L2-normalised and rotated back by ``rot90(4 - k)`` so that all four maps are aligned; the
    channel axis is rotation-major (rotation, prompt), as the original ``correlation``.
    """
    if len(features) != NUM_ROTATIONS:
        raise ValueError(f"expected {NUM_ROTATIONS} rotated maps, got {len(features)}")
    maps = [
        torch.rot90(F.normalize(f, dim=1), k=(NUM_ROTATIONS - k) % NUM_ROTATIONS, dims=(2, 3))
        for k, f in enumerate(features)
    ]
    text = F.normalize(text, dim=-1)
    cost = torch.einsum("bnchw,btpc->bnpthw", torch.stack(maps, dim=1), text)
    return cost.flatten(1, 2)


# -- spatial aggregation: Swin blocks with appearance guidance in Q and K ------------------------
def _square(size: int | Sequence[int], what: str) -> int:
    if isinstance(size, int):
        return size
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"{what} must be square, got {tuple(size)}")
    return int(size[0])


def _windows(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def _merge_windows(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """The inverse of ``_windows``: (B * windows, window * window, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(resolution: Sequence[int], window: int, shift: int) -> Tensor:
    """The additive mask (windows, window^2, window^2) of a Swin block shifted by ``shift``:
    0 between tokens of the same region of the cyclically shifted grid, -100 otherwise."""
    height, width = resolution
    regions = torch.zeros(1, height, width, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for index, (rows, cols) in enumerate((r, c) for r in bands for c in bands):
        regions[:, rows, cols, :] = index
    labels = _windows(regions, window).squeeze(-1)  # (windows, window^2)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, MASK_VALUE)


class GuidedWindowAttention(nn.Module):
    """Window self-attention whose queries and keys see the guidance: q, k = Linear(D + G -> D)
    on [x; g], v = Linear(D -> D) on x, softmax with ``num_heads`` heads, then ``proj``. No
    relative-position bias (the original ``WindowAttention`` of CAT-Seg)."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:  # (N, L, D) -> (N, heads, L, D / heads)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B * windows, L, D [+ G]), mask (windows, L, L) or None -> (B * windows, L, D)."""
        batch, length, _ = x.shape
        q, k, v = (
            self._heads(self.q(x)),
            self._heads(self.k(x)),
            self._heads(self.v(x[..., : self.dim])),
        )
        if mask is not None:  # one mask per window position, the same for every image
            windows = mask.shape[0]
            q, k, v = (t.unflatten(0, (batch // windows, windows)) for t in (q, k, v))
            mask = mask[:, None].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.reshape(batch, self.num_heads, length, -1).transpose(1, 2).flatten(2))


class SwinBlock(nn.Module):
    """A pre-norm Swin block on a fixed ``resolution`` grid with the (already normalised)
    appearance guidance concatenated for Q and K: ``x + attn(LN1(x) ; g)``, then
    ``x + mlp(LN2(x))`` (MLP ratio 4, GELU). ``shift > 0``: cyclic shift with the persistent
    ``attn_mask`` buffer; a grid no larger than the window is one unshifted window (as the
    original, which then registers ``attn_mask = None``)."""

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        resolution: Sequence[int],
        num_heads: int = 4,
        window: int = 12,
        shift: int = 0,
    ) -> None:
        super().__init__()
        self.resolution = (int(resolution[0]), int(resolution[1]))
        if min(self.resolution) <= window:
            window, shift = min(self.resolution), 0
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must be in [0, window {window})")
        if any(side % window for side in self.resolution):
            raise ValueError(f"window {window} does not divide the grid {self.resolution}")
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=4 * dim, act_layer=nn.GELU)
        mask = shifted_window_mask(self.resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B', h*w, D), guidance (B', h*w, G) or None -> (B', h*w, D)."""
        height, width = self.resolution
        batch, tokens, channels = x.shape
        if tokens != height * width:
            raise ValueError(f"expected {height}x{width} tokens, got {tokens}")
        y = self.norm1(x).view(batch, height, width, channels)
        if guidance is not None:
            y = torch.cat([y, guidance.view(batch, height, width, -1)], dim=-1)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(_windows(y, self.window), self.attn_mask)
        y = _merge_windows(y, self.window, height, width)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(batch, tokens, channels)
        return x + self.mlp(self.norm2(x))


class SwinBlockPair(nn.Module):
    """Spatial aggregation (the original ``SwinTransformerBlockWrapper``): ``block_1`` (regular
    windows), ``block_2`` (shifted by window // 2) on every class map, the appearance guidance
    LayerNorm'd once by ``guidance_norm``."""

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        resolution: Sequence[int],
        num_heads: int = 4,
        window: int = 12,
    ) -> None:
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance_dim, resolution, num_heads, window, 0)
        self.block_2 = SwinBlock(dim, guidance_dim, resolution, num_heads, window, window // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim)

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B, D, T, h, w), guidance (B, G, h, w) or None -> (B, D, T, h, w)."""
        batch, channels, classes, height, width = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(batch * classes, height * width, channels)
        if guidance is not None:
            guidance = guidance.flatten(2).transpose(1, 2).repeat_interleave(classes, dim=0)
            guidance = self.guidance_norm(guidance)
        x = self.block_2(self.block_1(x, guidance), guidance)
        return x.reshape(batch, classes, height, width, channels).permute(0, 4, 1, 2, 3)


# -- class aggregation: attention across the class axis ------------------------------------------
def linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """Linear attention ("Transformers are RNNs") with the feature map elu + 1 on (N, L, H, D)
    queries and (N, S, H, D) keys and values -> (N, L, H, D). The values are divided by S before
    the products and the result multiplied back (the original's fp16 guard)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / length)
    normaliser = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, normaliser) * length


class ClassAttention(nn.Module):
    """Attention across the class tokens (the original ``AttentionLayer``): q, k from [x; g],
    v from x, ``num_heads`` heads, linear (elu + 1) or full softmax; no output projection."""

    def __init__(
        self, dim: int, guidance_dim: int, num_heads: int = 4, attention_type: str = "linear"
    ) -> None:
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}")
        self.num_heads = num_heads
        self.attention_type = attention_type
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (N, T, D), guidance (N, T, G) or None -> (N, T, D)."""
        xg = x if guidance is None else torch.cat([x, guidance], dim=-1)
        q, k, v = (
            t.unflatten(-1, (self.num_heads, -1)) for t in (self.q(xg), self.k(xg), self.v(x))
        )
        if self.attention_type == "linear":
            out = linear_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
            out = out.transpose(1, 2)
        return out.flatten(-2)


class ClassTransformerLayer(nn.Module):
    """Class aggregation on an average-pooled grid (the original ``ClassTransformerLayer``).

    Each class map is pooled by ``pooling_size`` (changeable: :meth:`set_pooling`); at every
    pooled location the T class tokens, padded to ``pad_len`` with the learnable
    ``padding_tokens`` (and the text guidance with ``padding_guidance``), go through a pre-norm
    block ``z + attn(LN1(z), g)``, ``z + MLP(LN2(z))`` (128 -> 512 -> 128, ReLU); the result is
    upsampled bilinearly (align_corners=True), cut back to T and added to the input.
    """

    def __init__(
        self,
        hidden_dim: int = 128,
        guidance_dim: int = 128,
        nheads: int = 4,
        attention_type: str = "linear",
        pooling_size: int | Sequence[int] | None = (2, 2),
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        self.pad_len = pad_len
        pad = pad_len > 0
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, hidden_dim)) if pad else None
        guided = pad and guidance_dim > 0
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim)) if guided else None
        self.set_pooling(pooling_size)
        self.attention = ClassAttention(hidden_dim, guidance_dim, nheads, attention_type)
        self.MLP = nn.Sequential(
            nn.Linear(hidden_dim, 4 * hidden_dim), nn.ReLU(), nn.Linear(4 * hidden_dim, hidden_dim)
        )
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)

    def set_pooling(self, pooling_size: int | Sequence[int] | None) -> None:
        """Average-pool by ``pooling_size`` (None: no pooling) before the class attention."""
        if isinstance(pooling_size, int):
            pooling_size = (pooling_size, pooling_size)
        size = None if pooling_size is None else (int(pooling_size[0]), int(pooling_size[1]))
        self.pooling_size = size
        self.pool = nn.AvgPool2d(size) if size is not None else nn.Identity()

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B, D, T, h, w), text guidance (B, T, G) or None -> (B, D, T, h, w)."""
        batch, channels, classes, height, width = x.shape
        pooled = self.pool(x.transpose(1, 2).reshape(batch * classes, channels, height, width))
        hp, wp = pooled.shape[-2:]
        z = pooled.reshape(batch, classes, channels, hp, wp).permute(0, 3, 4, 1, 2)
        pad = self.pad_len - classes if self.padding_tokens is not None else 0
        if pad > 0:
            z = torch.cat([z, self.padding_tokens.expand(batch, hp, wp, pad, channels)], dim=3)
        length = z.shape[3]
        z = z.reshape(batch * hp * wp, length, channels)
        if guidance is not None:
            if pad > 0 and self.padding_guidance is not None:
                extra = self.padding_guidance.expand(batch, pad, -1)
                guidance = torch.cat([guidance, extra], dim=1)
            guidance = guidance[:, None, None].expand(batch, hp, wp, length, guidance.shape[-1])
            guidance = guidance.reshape(batch * hp * wp, length, -1)
        z = z + self.attention(self.norm1(z), guidance)
        z = z + self.MLP(self.norm2(z))
        # the padding is cut before the upsampling (the original cuts after it: the same values)
        z = z.reshape(batch, hp, wp, length, channels)[:, :, :, :classes].permute(0, 3, 4, 1, 2)
        z = z.reshape(batch * classes, channels, hp, wp)
        z = F.interpolate(z, size=(height, width), mode="bilinear", align_corners=True)
        return x + z.reshape(batch, classes, channels, height, width).transpose(1, 2)


class AggregatorLayer(nn.Module):
    """One CAT-Seg aggregation layer: ``swin_block`` (spatial), then ``attention`` (class)."""

    def __init__(
        self,
        hidden_dim: int = 128,
        text_guidance_dim: int = 128,
        appearance_guidance_dim: int = 128,
        nheads: int = 4,
        input_resolution: Sequence[int] = (24, 24),
        pooling_size: int | Sequence[int] | None = (2, 2),
        window_size: int | Sequence[int] = (12, 12),
        attention_type: str = "linear",
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        window = _square(window_size, "window_size")
        self.swin_block = SwinBlockPair(
            hidden_dim, appearance_guidance_dim, input_resolution, nheads, window
        )
        self.attention = ClassTransformerLayer(
            hidden_dim, text_guidance_dim, nheads, attention_type, pooling_size, pad_len
        )

    def set_pooling(self, pooling_size: int | Sequence[int] | None) -> None:
        """Change the class aggregation's pooling (training (2, 2), official evaluation (1, 1))."""
        self.attention.set_pooling(pooling_size)

    def forward(
        self, x: Tensor, appearance_guidance: Tensor | None, text_guidance: Tensor | None
    ) -> Tensor:
        """x (B, D, T, h, w), appearance (B, G, h, w), text (B, T, G) -> (B, D, T, h, w)."""
        return self.attention(self.swin_block(x, appearance_guidance), text_guidance)


def set_pooling(module: nn.Module, pooling_size: int | Sequence[int] | None) -> None:
    """Set the class-aggregation pooling of every :class:`ClassTransformerLayer` in ``module``."""
    for layer in module.modules():
        if isinstance(layer, ClassTransformerLayer):
            layer.set_pooling(pooling_size)


# -- decoder ---------------------------------------------------------------------------------------
class DoubleConv(nn.Module):
    """[Conv3x3 (no bias) -> GroupNorm(out / 16 groups) -> ReLU] x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = out_channels // 16
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """One decoder stage of the CAT-Seg family: ``up`` = ConvTranspose2d(in -> in - g, k2, s2),
    the projected guidance of each of ``sources`` encoders (g channels each, repeated over the
    classes) concatenated in order, ``conv`` = DoubleConv(in - g + sources * g -> out).
    Cat-Seg has one source (CLIP), GSNet's ``FusionUP`` two (CLIP, DINO), RSKT-Seg's
    ``RSKT_Upsample`` three (CLIP, RemoteCLIP, DINO). Subclasses may re-weight each guidance
    first (:meth:`reweight`, OVRS)."""

    def __init__(
        self, in_channels: int, out_channels: int, guidance_channels: int, sources: int = 1
    ) -> None:
        super().__init__()
        if in_channels <= guidance_channels:
            raise ValueError(
                f"in_channels {in_channels} must exceed guidance_channels {guidance_channels}"
            )
        self.up = nn.ConvTranspose2d(
            in_channels, in_channels - guidance_channels, kernel_size=2, stride=2
        )
        self.conv = DoubleConv(in_channels + (sources - 1) * guidance_channels, out_channels)

    def reweight(self, x: Tensor, guidance: Tensor) -> Tensor:
        """The guidance (B, g, 2H, 2W) to concatenate, given the upsampled x (B*T, in - g, ...)."""
        return guidance

    def forward(self, x: Tensor, guidance: Tensor | Sequence[Tensor] | None = None) -> Tensor:
        """x (B*T, in, H, W), guidance (B, g, 2H, 2W) per source (one tensor, a sequence, or
        None for no guidance) -> (B*T, out, 2H, 2W)."""
        x = self.up(x)
        sources = [guidance] if isinstance(guidance, Tensor) else list(guidance or [])
        parts = [x]
        for source in sources:
            classes = x.shape[0] // source.shape[0]
            parts.append(self.reweight(x, source).repeat_interleave(classes, dim=0))
        return self.conv(torch.cat(parts, dim=1))


def clip_upsamplers(width: int) -> dict[str, nn.Module]:
    """The original ``upsample1`` / ``upsample2``: the two hooked encoder blocks (B, width, h, w)
    -> decoder guidance (B, 256, 2h, 2w) and (B, 128, 4h, 4w)."""
    return {
        "upsample1": nn.ConvTranspose2d(width, DECODER_GUIDANCE_DIMS[0], kernel_size=2, stride=2),
        "upsample2": nn.ConvTranspose2d(width, DECODER_GUIDANCE_DIMS[1], kernel_size=4, stride=4),
    }


def dino_projections(dino_width: int, clip_dim: int) -> dict[str, nn.Module]:
    """GSNet's (and RSKT-Seg's) DINO convs: ``dino_decod_proj1`` (B, W, 2h, 2w) -> (B, 256, 2h,
    2w), ``dino_decod_proj2`` -> (B, 128, 4h, 4w), ``dino_down_sample`` -> (B, C, h, w) for the
    DINO cost in the text space."""
    return {
        "dino_decod_proj1": nn.Conv2d(dino_width, DECODER_GUIDANCE_DIMS[0], kernel_size=1),
        "dino_decod_proj2": nn.ConvTranspose2d(
            dino_width, DECODER_GUIDANCE_DIMS[1], kernel_size=2, stride=2
        ),
        "dino_down_sample": nn.Conv2d(dino_width, clip_dim, kernel_size=2, stride=2),
    }


def guidance_projections(in_dims: Sequence[int], out_dims: Sequence[int]) -> nn.ModuleList:
    """One Conv3x3 + ReLU per decoder guidance map (``in_dims[i]`` -> ``out_dims[i]``)."""
    return nn.ModuleList(
        nn.Sequential(nn.Conv2d(d, dp, kernel_size=3, stride=1, padding=1), nn.ReLU())
        for d, dp in zip(in_dims, out_dims, strict=True)
    )


# -- the aggregator ----------------------------------------------------------------------------
class CatSegAggregator(nn.Module):
    """CAT-Seg's ``Aggregator`` (checkpoint prefix ``sem_seg_head.predictor.transformer.``).

    Defaults are the released configs (``configs/vitb_384.yaml``: 2 layers, hidden 128, 4 heads,
    pooling (2, 2), window 12, linear class attention, pad length 256); ``text_guidance_dim`` and
    ``appearance_guidance_dim`` are C (512 ViT-B/16, 768 ViT-L/14@336). Subclasses change the cost
    (:meth:`correlation`) and the decoder stage (``up_class``).

    Args:
        prompt_channels: channels of the cost volume, i.e. ``conv1``'s input (P = 1 template).
        pooling_size: the class aggregation's pooling; :func:`set_pooling` changes it later.
        pad_len: class-axis length of the class aggregation (learnable padding below it; above
            it, only the ``pad_len`` classes with the highest cost are aggregated and the others
            get logit -100, as the original). 0 disables both.
    """

    up_class: type[Up] = Up

    def __init__(
        self,
        text_guidance_dim: int = 512,
        appearance_guidance_dim: int = 512,
        *,
        text_guidance_proj_dim: int = 128,
        appearance_guidance_proj_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        decoder_guidance_dims: Sequence[int] = DECODER_GUIDANCE_DIMS,
        decoder_guidance_proj_dims: Sequence[int] = (32, 16),
        num_layers: int = 2,
        nheads: int = 4,
        hidden_dim: int = 128,
        pooling_size: int | Sequence[int] | None = (2, 2),
        feature_resolution: Sequence[int] = (24, 24),
        window_size: int | Sequence[int] = 12,
        attention_type: str = "linear",
        prompt_channels: int = 1,
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.pad_len = pad_len
        # Registration order = the original state-dict order.
        self.layers = nn.ModuleList(
            AggregatorLayer(
                hidden_dim,
                text_guidance_proj_dim,
                appearance_guidance_proj_dim,
                nheads,
                feature_resolution,
                pooling_size,
                window_size,
                attention_type,
                pad_len,
            )
            for _ in range(num_layers)
        )
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.guidance_projection = nn.Sequential(
            nn.Conv2d(appearance_guidance_dim, appearance_guidance_proj_dim, 3, 1, 1), nn.ReLU()
        )
        self.text_guidance_projection = nn.Sequential(
            nn.Linear(text_guidance_dim, text_guidance_proj_dim), nn.ReLU()
        )
        self.decoder_guidance_projection = guidance_projections(
            decoder_guidance_dims, decoder_guidance_proj_dims
        )
        self.decoder1 = self.up_class(hidden_dim, decoder_dims[0], decoder_guidance_proj_dims[0])
        self.decoder2 = self.up_class(
            decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1]
        )
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)

    def correlation(self, img_feats: Tensor, text_feats: Tensor) -> Tensor:
        """The cost volume (B, P, T, h, w) of the dense map (B, C, h, w) and text (B, T, P, C)."""
        return cosine_cost(img_feats, text_feats)

    def corr_embed(self, cost: Tensor) -> Tensor:
        """(B, P, T, h, w) -> ``conv1`` per class -> (B, D, T, h, w)."""
        batch, channels, classes, height, width = cost.shape
        x = cost.transpose(1, 2).reshape(batch * classes, channels, height, width)
        x = self.conv1(x)
        return x.reshape(batch, classes, -1, height, width).transpose(1, 2)

    def conv_decoder(self, x: Tensor, guidance: Sequence[Tensor]) -> Tensor:
        """(B, D, T, h, w) and the projected guidance -> logits (B, T, 4h, 4w)."""
        batch, channels, classes, height, width = x.shape
        x = x.transpose(1, 2).reshape(batch * classes, channels, height, width)
        x = self.decoder2(self.decoder1(x, guidance[0]), guidance[1])
        x = self.head(x)
        return x.reshape(batch, classes, x.shape[-2], x.shape[-1])

    def _best_classes(self, cost: Tensor) -> Tensor:
        """Indices (B, pad_len) of the classes with the highest cost anywhere (any prompt)."""
        peak = cost.transpose(1, 2).flatten(2).max(dim=-1).values  # (B, T)
        return peak.topk(self.pad_len, dim=-1, sorted=False).indices

    def forward(
        self,
        img_feats: Tensor | Sequence[Tensor],
        text_feats: Tensor,
        appearance_guidance: Tensor,
        decoder_guidance: Sequence[Tensor],
    ) -> Tensor:
        """Logits (B, T, 4h, 4w) of every class.

        Args:
            img_feats: what :meth:`correlation` takes: the dense CLIP map (B, C, h, w) (a list
                of four rotated maps for OVRS).
            text_feats: (B, T, P, C) text embeddings; averaged over P and re-normalised for the
                class-attention guidance.
            appearance_guidance: (B, C, h, w) dense CLIP map for the Swin guidance.
            decoder_guidance: [(B, 256, 2h, 2w), (B, 128, 4h, 4w)] (``upsample1/2`` outputs).
        """
        cost = self.correlation(img_feats, text_feats)
        classes, num_classes = None, text_feats.shape[1]
        if 0 < self.pad_len < num_classes:
            classes = self._best_classes(cost)
            index = classes[..., None, None].expand(-1, -1, *text_feats.shape[-2:])
            text_feats = F.normalize(text_feats, dim=-1).gather(1, index)
            cost = self.correlation(img_feats, text_feats)
        x = self.corr_embed(cost)
        appearance = self.guidance_projection(appearance_guidance)
        projections = self.decoder_guidance_projection
        decoder = [proj(g) for proj, g in zip(projections, decoder_guidance, strict=True)]
        text = text_feats.mean(dim=-2)
        text = self.text_guidance_projection(text / text.norm(dim=-1, keepdim=True))
        for layer in self.layers:
            x = layer(x, appearance, text)
        logits = self.conv_decoder(x, decoder)
        if classes is None:
            return logits
        out = logits.new_full((logits.shape[0], num_classes, *logits.shape[-2:]), -100.0)
        index = classes[..., None, None].expand(-1, -1, *logits.shape[-2:])
        return out.scatter(1, index, logits)


def separate_sigmoid_fusion(
    clip_conv: nn.Module, dino_conv: nn.Module, fusion: nn.Module, clip: Tensor, dino: Tensor
) -> Tensor:
    """GSNet's ``corr_fusion_embed_seperate`` on per-class costs (N, P, h, w) -> (N, D, h, w):
    ``sigmoid(fusion([sigmoid(clip_conv(clip)), sigmoid(dino_conv(dino))])) +
    sigmoid(clip_conv(clip))``. (RSKT-Seg's ``simple_separate`` is the same with a 4-channel
    CLIP cost.)"""
    clip_embed = torch.sigmoid(clip_conv(clip))
    dino_embed = torch.sigmoid(dino_conv(dino))
    return torch.sigmoid(fusion(torch.cat([clip_embed, dino_embed], dim=1))) + clip_embed
