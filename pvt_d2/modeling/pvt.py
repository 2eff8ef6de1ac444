"""Pyramid Vision Transformer v1 and v2: building blocks, the 4-stage model and the table of variants.

Parameter names follow the authors' released checkpoints (``patch_embed{i}``, ``pos_embed{i}``, ``block{i}.{j}``,
``norm{i}``), so their files load with one rename (``mlp.dwconv.dwconv`` -> ``mlp.dwconv``, see
``pvt_d2.checkpoint.to_pvt_state_dict``). Stage indices in code are 0-based; names are 1-based like the authors'.

Token tensors are (B, N, C) with N = H * W in row-major order; feature maps are NCHW. Stage outputs are returned as
NCHW views of the token tensors (channels-last memory layout, no copy); every PyTorch op accepts them, call
``.contiguous()`` if an op of your own needs the default layout.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "PVTSpec", "PVT_ARCHS", "get_spec", "PVT", "PatchEmbed", "SpatialReductionAttention", "Mlp", "Block", "drop_path",
]


@dataclass(frozen=True)
class PVTSpec:
    """The architecture of one PVT variant (4 stages).

    version: 1 (non-overlapping patch embedding, position embeddings, no stage norms) or 2 (overlapping patch
        embedding, depthwise-conv FFN, a LayerNorm after every stage).
    depths: blocks per stage.
    embed_dims: channels per stage.
    num_heads: attention heads per stage.
    mlp_ratios: FFN hidden width / channels, per stage.
    sr_ratios: spatial-reduction ratio of keys/values per stage (1 = no reduction).
    linear: linear SRA (v2 ``_li``): keys/values pooled to 7x7 in every stage, ReLU after the FFN's fc1.
    """

    version: int
    depths: Tuple[int, int, int, int]
    embed_dims: Tuple[int, int, int, int] = (64, 128, 320, 512)
    num_heads: Tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: Tuple[float, float, float, float] = (8, 8, 4, 4)
    sr_ratios: Tuple[int, int, int, int] = (8, 4, 2, 1)
    linear: bool = False

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f"PVT version must be 1 or 2, got {self.version!r}")
        for field in ("depths", "embed_dims", "num_heads", "mlp_ratios", "sr_ratios"):
            value = getattr(self, field)
            if len(value) != 4:
                raise ValueError(f"PVT {field} must have 4 entries (one per stage), got {value!r}")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"PVT embed_dims {self.embed_dims} must be divisible by num_heads {self.num_heads}")
        if self.linear and self.version != 2:
            raise ValueError("linear SRA (linear=True) exists only in PVT v2")


PVT_ARCHS: Dict[str, PVTSpec] = {
    "pvt_tiny": PVTSpec(version=1, depths=(2, 2, 2, 2)),
    "pvt_small": PVTSpec(version=1, depths=(3, 4, 6, 3)),
    "pvt_medium": PVTSpec(version=1, depths=(3, 4, 18, 3)),
    "pvt_large": PVTSpec(version=1, depths=(3, 8, 27, 3)),
    "pvt_v2_b0": PVTSpec(version=2, depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256)),
    "pvt_v2_b1": PVTSpec(version=2, depths=(2, 2, 2, 2)),
    "pvt_v2_b2": PVTSpec(version=2, depths=(3, 4, 6, 3)),
    "pvt_v2_b2_li": PVTSpec(version=2, depths=(3, 4, 6, 3), linear=True),
    "pvt_v2_b3": PVTSpec(version=2, depths=(3, 4, 18, 3)),
    "pvt_v2_b4": PVTSpec(version=2, depths=(3, 8, 27, 3)),
    "pvt_v2_b5": PVTSpec(version=2, depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}


def get_spec(arch: str) -> PVTSpec:
    """The spec of a named variant; ValueError listing the valid names otherwise."""
    try:
        return PVT_ARCHS[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown PVT arch {arch!r}; valid archs: {', '.join(PVT_ARCHS)}") from None


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p, scale the rest by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, C) tokens -> (B, C, h, w) view (channels-last layout, no copy)."""
    return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Patch embedding: a strided convolution then LayerNorm (eps 1e-5) over channels.

    in_chans / embed_dim: input / output channels. kernel, stride, padding: of the convolution, in pixels of the
    input map. v1 uses kernel = stride (4, then 2) without padding (grid = floor(size / stride)); v2 uses overlapping
    7/4/3 then 3/2/1 (grid = ceil(size / stride)).
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int, padding: int = 0):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


def _records_autograd(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous, once.

    A stage's output is an NCHW view of its (B, h*w, C) tokens; a gradient that arrives in NCHW layout would reach
    every block of the stage as a strided tensor, and each consumer (LayerNorm and linear backwards) would copy it
    again. Measured on pvt_small (train step, batch 2, 800x1344): ~30 such copies, ~250 ms per step.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


# oneDNN's fused ops (what torch.compile's CPU backend calls); None where this PyTorch build lacks them
_MKLDNN = torch.ops.mkldnn if torch.backends.mkldnn.is_available() else None
_ONEDNN_LINEAR = getattr(_MKLDNN, "_linear_pointwise", None)
_ONEDNN_CONV = getattr(_MKLDNN, "_convolution_pointwise", None)


def _cpu_matmul_dtype(x: torch.Tensor, layer: nn.Module) -> Optional[torch.dtype]:
    """The dtype our CPU-specific paths run ``layer``'s matmuls in: fp32 for fp32 input and parameters, or bf16 under
    CPU bf16 autocast (inputs and parameters cast to bf16, as autocast would); None elsewhere (other devices,
    dtypes and autocast dtypes, tracing, ``torch.compile``)."""
    if (x.device.type != "cpu" or layer.weight.dtype != torch.float32 or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if bf16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def _onednn_dtype(x: torch.Tensor, layer: nn.Module) -> Optional[torch.dtype]:
    """The dtype oneDNN's fused inference ops may run in (``_cpu_matmul_dtype``), None with autograd."""
    return None if torch.is_grad_enabled() else _cpu_matmul_dtype(x, layer)


def _in_dtype(dtype: torch.dtype, *tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """The tensors in ``dtype`` (None stays None; no copy of those already in it)."""
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _params_in(layer: nn.Module, dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], ...]:
    return _in_dtype(dtype, layer.weight, layer.bias)


def _linear(x: torch.Tensor, layer: nn.Linear, onednn: bool, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, then GELU if ``gelu``. With ``onednn`` in CPU inference (fp32, or bf16 autocast): one oneDNN
    matmul that adds the bias (and applies the exact GELU) as it writes the output, instead of copying the bias
    into a fresh output first and running the GELU as one more pass (fp32: same values; bf16: one rounding less)."""
    dtype = _onednn_dtype(x, layer) if onednn and _ONEDNN_LINEAR is not None else None
    if dtype is not None:
        return _ONEDNN_LINEAR(x.to(dtype), *_params_in(layer, dtype), "gelu" if gelu else "none", [],
                              "none" if gelu else "")
    x = layer(x)
    if gelu:
        return torch.ops.aten.gelu_(x) if not _records_autograd(x) else F.gelu(x)
    return x


def _conv_gelu(x: torch.Tensor, conv: nn.Conv2d, onednn: bool) -> torch.Tensor:
    """GELU(conv(x)) without autograd; with ``onednn`` in CPU inference (fp32, or bf16 autocast), one oneDNN call
    (GELU in the epilogue)."""
    dtype = _onednn_dtype(x, conv) if onednn and _ONEDNN_CONV is not None else None
    if dtype is not None and isinstance(conv.padding, tuple):
        return _ONEDNN_CONV(x.to(dtype), *_params_in(conv, dtype), list(conv.padding), list(conv.stride),
                            list(conv.dilation), conv.groups, "gelu", [], "none")
    return torch.ops.aten.gelu_(conv(x))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` (scale head_dim ** -0.5) for (B, heads, N, head_dim) queries.

    In CPU training with fewer (image, head) pairs than threads, the queries are split into that many times more
    heads, which share k and v: PyTorch's CPU attention backward runs one thread per (image, head), so at batch 1
    the one-head stage 1 ran its backward on one thread of two (measured, pvt_v2_b2 stage 1: 380 ms on two threads,
    336 ms on one; forward + backward 373-463 -> 268-310 ms split). Same outputs and gradients.
    """
    b, heads, n, d = q.shape
    split = torch.get_num_threads() // (b * heads)
    if split < 2 or n < 2 * split or q.device.type != "cpu" or not _records_autograd(q) or torch.jit.is_tracing():
        return F.scaled_dot_product_attention(q, k, v)
    rows = -(-n // split)
    if rows * split != n:  # zero queries pad the last split; their outputs are dropped, so their gradients are zero
        q = F.pad(q, (0, 0, 0, rows * split - n))
    q = q.reshape(b, heads * split, rows, d)
    k, v = (t.unsqueeze(2).expand(-1, -1, split, -1, -1).flatten(1, 2) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v).reshape(b, heads, rows * split, d)[:, :, :n]


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced copy of the tokens.

    dim: channels. num_heads: heads (head_dim = dim / num_heads, scale head_dim**-0.5).
    sr_ratio: keys/values from a stride-sr_ratio convolution (kernel sr_ratio) then LayerNorm; 1 = no reduction.
    linear: linear SRA instead: AdaptiveAvgPool2d(7) -> 1x1 conv -> LayerNorm -> GELU (sr_ratio is then unused).
    onednn: CPU inference (fp32, or bf16 autocast) runs the q, kv and proj layers through ``_linear``'s oneDNN
    path (bias fused).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, linear: bool = False, onednn: bool = False):
        super().__init__()
        self.onednn = onednn
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.linear = linear
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduce = linear or sr_ratio > 1
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, C = x.shape
        q = _linear(x, self.q, self.onednn).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        if self.reduce:
            y = _tokens_to_map(x, h, w)
            if self.linear:
                y = self.pool(y)
            y = self.norm(self.sr(y).flatten(2).transpose(1, 2))
            if self.linear:
                y = self.act(y)
        else:
            y = x
        kv = _linear(y, self.kv, self.onednn)
        k, v = kv.unflatten(-1, (2, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        out = _attention(q, k, v)
        return _linear(out.transpose(1, 2).reshape(B, N, C), self.proj, self.onednn)


def _rows_within(elements: int, row_elements: int) -> int:
    """How many rows of ``row_elements`` elements fit in ``elements`` (at least one)."""
    return max(1, elements // max(1, row_elements))


def _row_bands(h: int, rows: int, halo: int) -> Iterator[Tuple[int, int, int, int]]:
    """Bands of ``rows`` grid rows covering 0..h: (top, bottom, lo, hi), where lo..hi adds up to ``halo`` rows on
    each side (what a (2 * halo + 1)-tall convolution reads to produce rows top..bottom)."""
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        yield top, bottom, max(0, top - halo), min(h, bottom + halo)


def _gelu_linear_grads(grad_out: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, want_h: bool,
                       grad_w: Optional[torch.Tensor] = None, in_place: bool = True) -> Optional[torch.Tensor]:
    """The gradient w.r.t. h of ``F.linear(F.gelu(h), weight)`` (if ``want_h``), for 2-D h and grad_out, all in one
    dtype; the weight's gradient is added to ``grad_w`` if given (which may be wider: fp32 for bf16 matmuls).

    GELU(h) is freed before the gradient w.r.t. h is made; ``in_place``: the GELU backward writes into the matmul's
    output, so that one hidden-size temporary is alive at a time (on a small band, out of place measured 2-3%
    faster here).
    """
    if grad_w is not None:
        _add_matmul(grad_w, grad_out.t(), F.gelu(h))
    if not want_h:
        return None
    grad_a = grad_out.mm(weight)
    if not in_place:
        return torch.ops.aten.gelu_backward(grad_a, h)
    return torch.ops.aten.gelu_backward.grad_input(grad_a, h, grad_input=grad_a)


def _add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a · b``; with a and b narrower than acc (bf16 into an fp32 gradient) the product is summed in acc's
    dtype."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    else:
        acc += a.mm(b)


class _GeluLinear(torch.autograd.Function):
    """``F.linear(F.gelu(h), weight, bias)`` that saves h, not GELU(h): the backward recomputes the GELU.

    One hidden-size activation per FFN fewer in memory for one elementwise pass more in the backward. Under autocast
    the forward's ops autocast as usual; the backward then runs in h's dtype and returns the weight and bias
    gradients in theirs, as autocast's own casts would.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        flat_h = h.reshape(-1, h.shape[-1])
        flat_grad = grad_out.to(h.dtype).reshape(-1, grad_out.shape[-1])
        grad_w = flat_h.new_zeros((flat_grad.shape[1], flat_h.shape[1])) if needs[1] else None
        grad_h = _gelu_linear_grads(flat_grad, flat_h, weight.to(h.dtype), needs[0], grad_w)
        grad_b = flat_grad.sum(0).to(ctx.bias_dtype) if needs[2] else None
        return (None if grad_h is None else grad_h.view_as(h), None if grad_w is None else grad_w.to(weight.dtype),
                grad_b)


class _DwConvGeluLinear(torch.autograd.Function):
    """v2's FFN after fc1, ``F.linear(F.gelu(dwconv(a)), weight, bias)``, saving only a (fc1's output, which the
    conv's weight gradient needs anyway): the backward recomputes the depthwise conv and the GELU.

    Against ``_GeluLinear`` (which keeps the conv's output too) one hidden-size activation per block fewer, for one
    depthwise conv more in the backward. ``a`` is (B, h*w, C) tokens; the conv (3x3, stride 1, padding 1) runs on
    their (B, C, h, w) map. Under autocast the forward's ops autocast as usual and the backward runs in the dtype
    the conv ran in.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, h: int, w: int, conv: nn.Conv2d, conv_weight: torch.Tensor,
                conv_bias: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(a, conv_weight, conv_bias, weight)
        ctx.geometry = (h, w, conv.groups)
        ctx.bias_dtype = None if bias is None else bias.dtype
        g = F.gelu(conv(_tokens_to_map(a, h, w))).flatten(2).transpose(1, 2)
        ctx.conv_dtype = g.dtype
        return F.linear(g, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, conv_weight, conv_bias, weight = ctx.saved_tensors
        h, w, groups = ctx.geometry
        dt = ctx.conv_dtype
        needs = ctx.needs_input_grad  # a, h, w, conv, conv_weight, conv_bias, weight, bias
        a_map = _tokens_to_map(a, h, w).to(dt)
        cw = conv_weight.to(dt)
        y = F.conv2d(a_map, cw, None if conv_bias is None else conv_bias.to(dt), 1, 1, 1, groups)
        y = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
        flat_grad = grad_out.to(dt).reshape(-1, grad_out.shape[-1])
        wanted = [needs[0], needs[4], needs[5]]  # from the conv's backward
        grad_w = y.new_zeros((flat_grad.shape[1], y.shape[1])) if needs[6] else None
        grad_y = _gelu_linear_grads(flat_grad, y, weight.to(dt), any(wanted), grad_w)
        del y
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = flat_grad.sum(0).to(ctx.bias_dtype) if needs[7] else None
        grad_a = grad_cw = grad_cb = None
        if grad_y is not None:
            grad_y = grad_y.view_as(a)
            grad_a_map, grad_cw, grad_cb = torch.ops.aten.convolution_backward(
                _tokens_to_map(grad_y, h, w), a_map, cw, None if conv_bias is None else [conv_bias.shape[0]],
                [1, 1], [1, 1], [1, 1], False, [0, 0], groups, wanted)
            if grad_a_map is not None:
                grad_a = grad_a_map.flatten(2).transpose(1, 2).to(a.dtype)
            if grad_cw is not None:
                grad_cw = grad_cw.to(conv_weight.dtype)
            if grad_cb is not None:
                grad_cb = grad_cb.to(conv_bias.dtype)
        return grad_a, None, None, None, grad_cw, grad_cb, grad_w, grad_b


# Hidden activations (elements) per band of one image's rows in banded CPU training (``_BandedMlp``): 8 MB in fp32,
# which glibc serves from its heap (pvt_d2.cpu_allocator) and the CPU cache holds between the band's passes.
_TRAIN_BAND_ELEMENTS = 1 << 21


def _train_bands(b: int, h: int, w: int, hidden: int) -> List[Tuple[int, int, int, int]]:
    """The bands of ``_BandedMlp``, (first image, last image + 1, top row, bottom row), each with at most about
    ``_TRAIN_BAND_ELEMENTS`` hidden activations: several whole images where one fits, else rows of one image."""
    rows = _rows_within(_TRAIN_BAND_ELEMENTS, w * hidden)
    if rows >= h:
        per = rows // h
        return [(i, min(b, i + per), 0, h) for i in range(0, b, per)]
    return [(i, i + 1, top, bottom) for i in range(b) for top, bottom, _, _ in _row_bands(h, rows, 0)]


def _whole_images(band: Tuple[int, int, int, int], h: int) -> bool:
    """Whether a band of ``_train_bands`` holds whole images (else rows of one image)."""
    return band[2] == 0 and band[3] == h


def _band_buffer(bands: List[Tuple[int, int, int, int]], h: int, w: int, weight: torch.Tensor,
                 halo: int) -> torch.Tensor:
    """Room for the largest band's fc1 activations (fc1's weight (hidden, dim) gives their width and dtype), halo
    rows included."""
    rows = max((last - first) * h if _whole_images((first, last, top, bottom), h) else bottom - top + 2 * halo
               for first, last, top, bottom in bands)
    return weight.new_empty((rows * w, weight.shape[0]))


def _band_fc1(x: torch.Tensor, band: Tuple[int, int, int, int], h: int, w: int, halo: int, buf: torch.Tensor,
              weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """fc1 (then ReLU) of a band's tokens of x (B, h * w, dim), as (tokens, hidden) in ``buf`` and the weight's dtype:
    whole images as they are, or one image's rows top - halo .. bottom + halo, rows beyond the image zero (the
    conv's padding)."""
    first, last, top, bottom = band
    if _whole_images(band, h):
        a = buf[:(last - first) * h * w]
        torch.addmm(bias, x[first:last].reshape(-1, x.shape[-1]).to(weight.dtype), weight.t(), out=a)
    else:
        a = buf[:(bottom - top + 2 * halo) * w]
        lo, hi = max(0, top - halo), min(h, bottom + halo)
        start, stop = (lo - top + halo) * w, (hi - top + halo) * w
        torch.addmm(bias, x[first, lo * w:hi * w].to(weight.dtype), weight.t(), out=a[start:stop])
        a[:start].zero_()
        a[stop:].zero_()
    return a.relu_() if relu else a


def _band_map(a: torch.Tensor, w: int, images: int) -> torch.Tensor:
    """A band's (tokens, C) as an (images, C, rows, w) map (channels-last, no copy)."""
    return a.view(images, -1, w, a.shape[1]).permute(0, 3, 1, 2)


def _band_tokens(m: torch.Tensor) -> torch.Tensor:
    """A channels-last (images, C, rows, w) map as (tokens, C) (no copy)."""
    return m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])


class _BandedMlp(torch.autograd.Function):
    """The whole FFN, ``fc2(GELU([dwconv]([ReLU](fc1(x)))))``, for training on the CPU (fp32, or bf16 autocast), band
    by band (several whole images, or rows of one image: ``_train_bands``), saving only the FFN's input x.

    The hidden activations are 4-8x wider than x. Whole hidden-size tensors (hundreds of MB each at detection
    resolution) page-fault when allocated and stream through memory at every pass, while a band's
    (``_TRAIN_BAND_ELEMENTS``) stays in the cache from fc1 to fc2. The backward recomputes fc1, the conv and the
    GELU band by band (one fc1 matmul more than the plain backward). In a band of rows, v2's 3x3 conv reads one row
    above and below: fc1 is computed for those halo rows too (zeros beyond the image, the conv's padding), and the
    conv's input gradient for the two rows the band shares with the next is carried over to it.

    x: (B, h * w, dim) tokens, or (B, N, dim) with h = N, w = 1 without the conv. conv: 3x3 depthwise, padding 1.
    matmul_dtype: fp32, or bf16 under CPU bf16 autocast: the band's fc1, conv, GELU and fc2 and their gradients
    run in it, as autocast runs them, and the output is in it; the weight gradients are summed in the parameters'
    dtype (fp32), band by band.
    """

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def forward(ctx, x: torch.Tensor, h: int, w: int, relu: bool, w1: torch.Tensor, b1: torch.Tensor,
                conv_w: Optional[torch.Tensor], conv_b: Optional[torch.Tensor], w2: torch.Tensor,
                b2: torch.Tensor, matmul_dtype: torch.dtype) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, w1, b1, conv_w, conv_b, w2)
        ctx.geometry = (h, w, relu, matmul_dtype)
        hidden, halo = w1.shape[0], 0 if conv_w is None else 1
        w1, b1, conv_w, conv_b, w2, b2 = _in_dtype(matmul_dtype, w1, b1, conv_w, conv_b, w2, b2)
        bands = _train_bands(x.shape[0], h, w, hidden)
        buf = _band_buffer(bands, h, w, w1, halo)
        out = x.new_empty((*x.shape[:2], w2.shape[0]), dtype=matmul_dtype)
        for band in bands:
            first, last, top, bottom = band
            whole = _whole_images(band, h)
            a = _band_fc1(x, band, h, w, halo, buf, w1, b1, relu)
            if conv_w is None:
                g = F.gelu(a)
            else:
                a_map, pad = _band_map(a, w, last - first), [1 if whole else 0, 1]
                if _ONEDNN_CONV is not None:  # conv + GELU in one call
                    g = _ONEDNN_CONV(a_map, conv_w, conv_b, pad, [1, 1], [1, 1], hidden, "gelu", [], "none")
                else:
                    g = F.gelu(F.conv2d(a_map, conv_w, conv_b, 1, pad, 1, hidden))
                g = _band_tokens(g)
            torch.addmm(b2, g, w2.t(), out=out[first:last, top * w:bottom * w].reshape(-1, w2.shape[0]))
        return out

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad_out: torch.Tensor):
        x, w1, b1, conv_w, conv_b, w2 = ctx.saved_tensors
        h, w, relu, mdt = ctx.geometry
        needs = ctx.needs_input_grad  # x, h, w, relu, w1, b1, conv_w, conv_b, w2, b2, matmul_dtype
        hidden, halo = w1.shape[0], 0 if conv_w is None else 1
        w1_m, b1_m, conv_w_m, conv_b_m, w2_m = _in_dtype(mdt, w1, b1, conv_w, conv_b, w2)
        bands = _train_bands(x.shape[0], h, w, hidden)
        buf = _band_buffer(bands, h, w, w1_m, halo)
        grad_out = grad_out.contiguous()  # in the output's dtype, mdt
        grad_x = torch.empty_like(x) if needs[0] else None
        grad_w1, grad_b1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)
        grad_cw = grad_cb = None
        if conv_w is not None:
            grad_cw, grad_cb = torch.zeros_like(conv_w), torch.zeros_like(conv_b)
            flipped_w = conv_w_m.flip(2, 3)
        carry = None  # the previous band's conv input gradient for this band's first two rows (top - 1, top)
        for band in bands:
            first, last, top, bottom = band
            whole = _whole_images(band, h)
            a = _band_fc1(x, band, h, w, halo, buf, w1_m, b1_m, relu)
            pad = [1 if whole else 0, 1]
            a_map = None if conv_w is None else _band_map(a, w, last - first)
            y = a if conv_w is None else _band_tokens(F.conv2d(a_map, conv_w_m, conv_b_m, 1, pad, 1, hidden))
            g_out = grad_out[first:last, top * w:bottom * w].reshape(-1, grad_out.shape[-1])
            grad_y = _gelu_linear_grads(g_out, y, w2_m, True, grad_w2, in_place=False)
            first_row, last_row = top, bottom
            if conv_w is not None:
                grad_y_map = _band_map(grad_y, w, last - first)
                _, part_w, part_b = torch.ops.aten.convolution_backward(
                    grad_y_map, a_map, conv_w_m, [hidden], [1, 1], pad, [1, 1], False,
                    [0, 0], hidden, [False, True, True])
                grad_cw += part_w
                grad_cb += part_b
                # the input gradient: the transposed conv, run as a conv with the kernel flipped (oneDNN's forward
                # kernel, 2.4x faster here than its backward-data one); in a band of rows, that of rows
                # top - 1 .. bottom + 1, complete up to row bottom - 1
                grad_y = _band_tokens(F.conv2d(grad_y_map, flipped_w, None, 1, [2 - p for p in pad], 1, hidden))
                if not whole:
                    if carry is not None:
                        grad_y[:2 * w] += carry
                    first_row, last_row = max(0, top - 1), (h if bottom == h else bottom - 1)
                    carry = grad_y[(bottom - top) * w:].clone() if bottom < h else None
                    kept = slice((first_row - top + 1) * w, (last_row - top + 1) * w)  # not the zero row above
                    grad_y, a = grad_y[kept], a[kept]
            grad_a = grad_y * (a > 0) if relu else grad_y
            grad_b1 += grad_a.sum(0, dtype=grad_b1.dtype)
            x_rows = x[first:last, first_row * w:last_row * w].reshape(-1, x.shape[-1])
            _add_matmul(grad_w1, grad_a.t(), x_rows.to(mdt))
            if grad_x is not None:
                rows = grad_x[first:last, first_row * w:last_row * w].reshape(-1, x.shape[-1])
                if rows.dtype == mdt:
                    torch.mm(grad_a, w1_m, out=rows)
                else:
                    rows.copy_(grad_a.mm(w1_m))
        grad_b2 = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=w2.dtype)
        grads = (grad_w1, grad_b1, grad_cw, grad_cb, grad_w2, grad_b2)
        return (grad_x, None, None, None, *(g if need else None for g, need in zip(grads, needs[4:10])), None)


# Hidden activations (elements) of one band of token rows in chunked CPU inference: 16 MB in fp32, which stays in
# this CPU's L3 cache between fc1 and fc2 (measured: pvt_small stage-1 FFN 68 -> 38 ms at 800x1344).
_MLP_BAND_ELEMENTS = 1 << 22


class Mlp(nn.Module):
    """The feed-forward network: fc1 -> [ReLU] -> [depthwise 3x3 conv] -> GELU -> fc2.

    dim / hidden_dim: channels in and out / in the middle. dwconv: v2's depthwise conv on the (hidden, h, w) map.
    relu: ReLU after fc1 (v2 ``_li``). recompute_gelu: in training, keep the GELU's input instead of its output
    for the backward and recompute the GELU there (``_GeluLinear``), and in v2 keep only the depthwise conv's input
    and recompute the conv too (``_DwConvGeluLinear``): one hidden-size activation less per block, same
    gradients. Without autograd the GELU runs in place. onednn: CPU inference (fp32, or bf16 autocast) runs fc1
    and fc2 through ``_linear``'s oneDNN path, the GELU fused into fc1 (v1) or into the depthwise conv (v2,
    ``_conv_gelu``).
    chunked: CPU inference runs the FFN over bands of token rows (``_MLP_BAND_ELEMENTS`` hidden activations each;
    v2's depthwise conv gets one extra row above and below), so that the hidden activations are read back from
    the cache instead of memory: same outputs, faster.
    chunked_training: CPU training, in fp32 or under bf16 autocast, runs the whole FFN band by band and saves only
    its input (``_BandedMlp``): same gradients, faster and leaner; ``recompute_gelu`` then only matters elsewhere
    (GPU, other autocast dtypes).
    """

    def __init__(self, dim: int, hidden_dim: int, dwconv: bool = False, relu: bool = False,
                 recompute_gelu: bool = False, onednn: bool = False, chunked: bool = False,
                 chunked_training: bool = False):
        super().__init__()
        self.onednn = onednn
        self.chunked = chunked
        self.chunked_training = chunked_training
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.relu = relu
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim) if dwconv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.recompute_gelu = recompute_gelu

    def _infer_rows(self, x: torch.Tensor, h: int, w: int, first: int, rows: int) -> torch.Tensor:
        """Inference output for token rows ``first .. first + rows`` of the (h, w) grid of tokens ``x`` (all of
        ``x``, v1's stage-4 cls token included, when they are all the rows)."""
        if self.dwconv is None and (first or rows != h):  # without the conv, only the kept rows are needed
            x = x[:, first * w:(first + rows) * w]
        if self.dwconv is None and not self.relu:  # v1: fc1 + GELU fused
            return _linear(_linear(x, self.fc1, self.onednn, gelu=True), self.fc2, self.onednn)
        x = _linear(x, self.fc1, self.onednn)
        if self.relu:
            x = F.relu(x, inplace=True)
        if self.dwconv is not None:  # depthwise conv + GELU fused
            x = _conv_gelu(_tokens_to_map(x, h, w), self.dwconv, self.onednn)[:, :, first:first + rows]
            x = x.flatten(2).transpose(1, 2)
        else:
            x = torch.ops.aten.gelu_(x)
        return _linear(x, self.fc2, self.onednn)

    def _infer(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, _ = x.shape
        band = _rows_within(_MLP_BAND_ELEMENTS, b * w * self.fc1.out_features)
        if not self.chunked or x.device.type != "cpu" or band >= h or n != h * w or torch.jit.is_tracing():
            return self._infer_rows(x, h, w, 0, h)
        halo = 1 if self.dwconv is not None else 0  # the 3x3 conv reads one row above and below
        out = x.new_empty((b, n, self.fc2.out_features))
        for top, bottom, lo, hi in _row_bands(h, band, halo):
            band_x = x[:, lo * w:hi * w].contiguous()
            out[:, top * w:bottom * w] = self._infer_rows(band_x, hi - lo, w, top - lo, bottom - top)
        return out

    def _banded_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The matmul dtype of ``_BandedMlp`` if this call runs it (chunked_training, on the CPU with autograd, in
        fp32 or under bf16 autocast: ``_cpu_matmul_dtype``), else None."""
        if not (self.chunked_training and (x.requires_grad or self.fc1.weight.requires_grad)
                and self.fc1.bias is not None and self.fc2.bias is not None
                and (self.dwconv is None or self.dwconv.bias is not None)):
            return None
        return _cpu_matmul_dtype(x, self.fc1)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._infer(x, h, w)
        banded = self._banded_dtype(x)
        if banded is not None:
            conv_w, conv_b = (None, None) if self.dwconv is None else (self.dwconv.weight, self.dwconv.bias)
            grid = (h, w) if self.dwconv is not None else (x.shape[1], 1)  # without the conv, any rows of tokens
            return _BandedMlp.apply(x, *grid, self.relu, self.fc1.weight, self.fc1.bias, conv_w, conv_b,
                                    self.fc2.weight, self.fc2.bias, banded)
        x = _linear(x, self.fc1, self.onednn)
        if self.relu:
            x = F.relu(x, inplace=True)
        if (self.dwconv is not None and self.recompute_gelu and _records_autograd(x)
                and not torch.jit.is_tracing()):
            conv = self.dwconv
            return _DwConvGeluLinear.apply(x, h, w, conv, conv.weight, conv.bias, self.fc2.weight, self.fc2.bias)
        if self.dwconv is not None:
            x = self.dwconv(_tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)
        if not _records_autograd(x):
            return _linear(torch.ops.aten.gelu_(x), self.fc2, self.onednn)  # x is this function's temporary
        if self.recompute_gelu and not torch.jit.is_tracing():
            return _GeluLinear.apply(x, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(norm1(x))), then x + DropPath(mlp(norm2(x))).

    dim, num_heads, sr_ratio, linear: see SpatialReductionAttention. mlp_ratio: FFN hidden width / dim.
    dwconv: v2 FFN. drop_path: stochastic-depth probability of this block. norm1/norm2: LayerNorm eps 1e-6.
    recompute_gelu: see Mlp. onednn: see SpatialReductionAttention and Mlp. chunked_mlp / chunked_mlp_training:
    Mlp's ``chunked`` / ``chunked_training``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, linear: bool = False,
                 dwconv: bool = False, drop_path: float = 0.0, recompute_gelu: bool = False, onednn: bool = False,
                 chunked_mlp: bool = False, chunked_mlp_training: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, linear, onednn=onednn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dwconv=dwconv, relu=linear, recompute_gelu=recompute_gelu,
                       onednn=onednn, chunked=chunked_mlp, chunked_training=chunked_mlp_training)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), h, w), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), h, w), self.drop_path, self.training)


_POS_CACHE_SIZE = 16  # resized v1 position embeddings kept per model (one per stage and input grid)


class PVT(nn.Module):
    """Pyramid Vision Transformer (v1 or v2): 4 stages at strides 4, 8, 16, 32.

    ``forward(images)`` returns the outputs of the stages in ``out_indices`` as NCHW maps: v1 the raw stage outputs,
    v2 the outputs after each stage's LayerNorm. Any input size works: the grids are floor(size / stride) (v1) or
    ceil(size / stride) (v2); v1 position embeddings are resized to each stage's grid.

    Args:
        arch: a name in ``PVT_ARCHS`` (e.g. "pvt_small", "pvt_v2_b2"), or None to give the architecture explicitly
            with ``depths`` and ``embed_dims`` (and, optionally, the other ``PVTSpec`` fields).
        drop_path_rate: stochastic depth of the last block; it ramps linearly from 0 over all blocks.
        out_indices: 0-based stages whose outputs ``forward`` returns, in this order. Stages after the last one
            listed are built (so checkpoints load strictly) but never run, and their parameters get
            requires_grad=False (so DistributedDataParallel does not wait for their gradients).
        checkpoint_activations: recompute each block's activations in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) to save memory; gradients are unchanged.
        recompute_gelu: in training, each FFN keeps its GELU's input, not its output, for the backward and
            recomputes the GELU there; v2's FFN keeps only its depthwise conv's input and recomputes the conv and
            the GELU: one hidden-size activation less per block (800x1344, batch 2: pvt_small 30% less training
            memory; pvt_v2_b2 5.55 -> 3.88 GiB) for one elementwise pass (v2: and one depthwise conv), at no
            measurable cost in time; gradients are unchanged.
        onednn_inference: on the CPU without autograd (inference), in fp32 or under bf16 autocast, run the linear
            layers as oneDNN matmuls that add the bias (and v1's GELU) while writing their output, and v2's
            depthwise conv with its GELU as one oneDNN call: faster, same outputs to float rounding (bf16: one
            rounding less per fused op). Ignored on other devices, under other autocast dtypes, with autograd,
            in tracing and in ``torch.compile``.
        chunked_mlp_inference: on the CPU without autograd, run each FFN over bands of token rows whose hidden
            activations fit in the CPU cache (same outputs; pvt_small forward at 800x1344 ~10% faster).
        chunked_mlp_training: in training on the CPU (fp32, or bf16 autocast), run each whole FFN band by band
            (rows of one image, or several small images) and keep only its input for the backward, which recomputes
            fc1, the conv and the GELU band by band (``_BandedMlp``): no hidden-size tensor is ever whole; same
            gradients, faster and leaner. Other devices, dtypes and autocast dtypes use ``recompute_gelu``'s
            formulation.
        in_chans: image channels.
        pretrain_img_size: v1 only: the square image size (pixels) that the position embeddings were learned at;
            they hold one row per token of that grid (224 -> 56, 28, 14, 7; stage 4 adds a cls-token row).
        **spec: ``PVTSpec`` fields (version, depths, embed_dims, num_heads, mlp_ratios, sr_ratios, linear)
            overriding those of ``arch``; with arch=None, depths and embed_dims are required and version defaults
            to 2.
    """

    def __init__(self, arch: Optional[str] = "pvt_v2_b0", *, drop_path_rate: float = 0.0,
                 out_indices: Sequence[int] = (0, 1, 2, 3), checkpoint_activations: bool = False,
                 recompute_gelu: bool = True, onednn_inference: bool = True, chunked_mlp_inference: bool = True,
                 chunked_mlp_training: bool = True, in_chans: int = 3, pretrain_img_size: int = 224, **spec):
        super().__init__()
        if arch is None:
            missing = {"depths", "embed_dims"} - set(spec)
            if missing:
                raise ValueError(f"PVT(arch=None) needs explicit {sorted(missing)}")
            spec.setdefault("version", 2)
            self.spec = PVTSpec(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in spec.items()})
        else:
            try:
                self.spec = dataclasses.replace(
                    get_spec(arch), **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
            except TypeError as e:
                raise ValueError(f"PVT: invalid architecture override {sorted(spec)}: {e}") from None
        self.arch = arch
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in range(4) for i in out_indices) or len(set(out_indices)) != len(out_indices):
            raise ValueError(f"out_indices must be distinct stage indices in 0..3, got {out_indices!r}")
        self.out_indices = out_indices
        self.num_run_stages = max(out_indices) + 1
        self.checkpoint_activations = checkpoint_activations
        s = self.spec
        self.version = s.version
        self.embed_dims = s.embed_dims

        dpr = torch.linspace(0, drop_path_rate, sum(s.depths), device="cpu").tolist()
        first = 0
        for i in range(4):
            if s.version == 1:
                kernel, stride, pad = (4, 4, 0) if i == 0 else (2, 2, 0)
            else:
                kernel, stride, pad = (7, 4, 3) if i == 0 else (3, 2, 1)
            in_ch = in_chans if i == 0 else s.embed_dims[i - 1]
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(in_ch, s.embed_dims[i], kernel, stride, pad))
            blocks = nn.ModuleList(
                Block(s.embed_dims[i], s.num_heads[i], s.mlp_ratios[i], s.sr_ratios[i], linear=s.linear,
                      dwconv=s.version == 2, drop_path=dpr[first + j], recompute_gelu=recompute_gelu,
                      onednn=onednn_inference, chunked_mlp=chunked_mlp_inference,
                      chunked_mlp_training=chunked_mlp_training)
                for j in range(s.depths[i])
            )
            first += s.depths[i]
            setattr(self, f"block{i + 1}", blocks)
            if s.version == 2:
                setattr(self, f"norm{i + 1}", nn.LayerNorm(s.embed_dims[i], eps=1e-6))

        # v1 position embeddings, learned on a pretrain_img_size grid; stage 4 has an extra cls-token row 0
        self.pos_grids: Tuple[Tuple[int, int], ...] = ()
        if s.version == 1:
            grid = pretrain_img_size // 4
            grids = []
            for i in range(4):
                rows = grid * grid + (1 if i == 3 else 0)
                setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, rows, s.embed_dims[i])))
                grids.append((grid, grid))
                grid //= 2
            self.pos_grids = tuple(grids)
        self._pos_cache: Dict[Tuple[int, int, int], Tuple[tuple, torch.Tensor]] = {}

        self._init_weights()
        for i in range(self.num_run_stages, 4):
            for p in self.stage_parameters(i):
                p.requires_grad_(False)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and self.version == 2:  # v1 keeps PyTorch's default, as the authors
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
        for i in range(4 if self.version == 1 else 0):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)

    def stage_parameters(self, i: int) -> List[nn.Parameter]:
        """All parameters of stage i (0-based): patch embedding, v1 position embedding, blocks, v2 stage norm."""
        params = list(getattr(self, f"patch_embed{i + 1}").parameters())
        params += list(getattr(self, f"block{i + 1}").parameters())
        if self.version == 1:
            params.append(getattr(self, f"pos_embed{i + 1}"))
        else:
            params += list(getattr(self, f"norm{i + 1}").parameters())
        return params

    def stage_modules(self, i: int) -> List[nn.Module]:
        """The submodules of stage i (0-based)."""
        mods = [getattr(self, f"patch_embed{i + 1}"), getattr(self, f"block{i + 1}")]
        if self.version == 2:
            mods.append(getattr(self, f"norm{i + 1}"))
        return mods

    def pos_embed(self, i: int, h: int, w: int) -> torch.Tensor:
        """v1: stage i's position embedding for an h x w token grid, (1, h*w, C), without the cls-token row.

        Resized with bilinear interpolation (align_corners=False) unless (h, w) is the learned grid. Without autograd
        (inference), resized embeddings are cached per (stage, h, w); an entry is valid only for the exact parameter
        storage and version it was computed from, so in-place updates (optimizer steps, load_state_dict) and
        ``.to()`` invalidate it.
        """
        pos = getattr(self, f"pos_embed{i + 1}")
        if i == 3:
            pos = pos[:, 1:]
        gh, gw = self.pos_grids[i]
        if (h, w) == (gh, gw):
            return pos
        use_cache = not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.jit.is_scripting()
        if use_cache and hasattr(torch, "compiler") and torch.compiler.is_compiling():
            use_cache = False
        if use_cache:
            param = getattr(self, f"pos_embed{i + 1}")
            stamp = (param._version, param.data_ptr(), param.device, param.dtype)
            hit = self._pos_cache.get((i, h, w))
            if hit is not None and hit[0] == stamp:
                return hit[1]
        resized = F.interpolate(
            pos.unflatten(1, (gh, gw)).permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False
        ).flatten(2).transpose(1, 2)
        if use_cache:
            if len(self._pos_cache) >= _POS_CACHE_SIZE:
                self._pos_cache.clear()
            self._pos_cache[(i, h, w)] = (stamp, resized)
        return resized

    def embed(self, i: int, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """Stage i's patch embedding (plus v1 position embedding) of an NCHW map: tokens (B, h*w, C), h, w."""
        x, h, w = getattr(self, f"patch_embed{i + 1}")(x)
        if self.version == 1:
            x = x + self.pos_embed(i, h, w)
        return x, h, w

    def run_blocks(self, i: int, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Stage i's transformer blocks on tokens (B, N, C)."""
        ckpt = self.checkpoint_activations and torch.is_grad_enabled() and not torch.jit.is_tracing()
        for blk in getattr(self, f"block{i + 1}"):
            x = checkpoint(blk, x, h, w, use_reentrant=False) if ckpt else blk(x, h, w)
        return x

    def forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i (0-based) on an NCHW map (image or previous stage's output); returns an NCHW map."""
        x, h, w = self.embed(i, x)
        x = self.run_blocks(i, x, h, w)
        if self.version == 2:
            x = getattr(self, f"norm{i + 1}")(x)
        if _records_autograd(x) and not torch.jit.is_tracing():
            x = _ContiguousGrad.apply(x)
        return _tokens_to_map(x, h, w)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i in range(self.num_run_stages):
            x = self.forward_stage(i, x)
            outs.append(x)
        return [outs[i] for i in self.out_indices]

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, out_indices={self.out_indices}, "
                f"checkpoint_activations={self.checkpoint_activations}")
