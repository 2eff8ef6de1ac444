"""The speed and memory paths behind PVT's config switches: each computes what the plain layers in
``pvt_d2.modeling.pvt`` compute, on the same parameters, and steps aside where it does not apply (another device,
dtype or autocast dtype, tracing, ``torch.compile``).

- CPU inference (``MODEL.PVT.ONEDNN_INFERENCE``): oneDNN matmuls and convolutions with the bias and GELU fused
  (``fused_linear``, ``fused_conv_gelu``); ``MODEL.PVT.CHUNKED_MLP_INFERENCE``: the FFN over bands of token rows
  whose hidden activations stay in the cache (``in_row_bands``).
- Training memory (``MODEL.PVT.RECOMPUTE_GELU``): autograd functions that keep the GELU's input, or v2's depthwise
  conv's input, and recompute the rest in the backward (``GeluLinear``, ``DwConvGeluLinear``).
- CPU training (``MODEL.PVT.CHUNKED_MLP_TRAINING``): the whole FFN band by band, saving only its input
  (``BandedMlp``); the attention with its queries split across threads (``attention``); one contiguous gradient
  per stage output (``ContiguousGrad``).
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "tokens_to_map", "records_autograd", "ContiguousGrad", "cpu_matmul_dtype", "fused_linear", "fused_conv_gelu",
    "attention", "in_row_bands", "GeluLinear", "DwConvGeluLinear", "BandedMlp",
]


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, C) tokens -> (B, C, h, w) view (channels-last layout, no copy)."""
    return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)


def records_autograd(x: torch.Tensor) -> bool:
    """Whether an op on x now is recorded for the backward."""
    return torch.is_grad_enabled() and x.requires_grad


class ContiguousGrad(torch.autograd.Function):
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


def cpu_matmul_dtype(x: torch.Tensor, layer: nn.Module) -> Optional[torch.dtype]:
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
    """The dtype oneDNN's fused inference ops may run in (``cpu_matmul_dtype``), None with autograd."""
    return None if torch.is_grad_enabled() else cpu_matmul_dtype(x, layer)


def _in_dtype(dtype: torch.dtype, *tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """The tensors in ``dtype`` (None stays None; no copy of those already in it)."""
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _params_in(layer: nn.Module, dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], ...]:
    return _in_dtype(dtype, layer.weight, layer.bias)


def fused_linear(x: torch.Tensor, layer: nn.Linear, onednn: bool, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, then GELU if ``gelu``. With ``onednn`` in CPU inference (fp32, or bf16 autocast): one oneDNN
    matmul that adds the bias (and applies the exact GELU) as it writes the output, instead of copying the bias
    into a fresh output first and running the GELU as one more pass (fp32: same values; bf16: one rounding less)."""
    dtype = _onednn_dtype(x, layer) if onednn and _ONEDNN_LINEAR is not None else None
    if dtype is not None:
        return _ONEDNN_LINEAR(x.to(dtype), *_params_in(layer, dtype), "gelu" if gelu else "none", [],
                              "none" if gelu else "")
    x = layer(x)
    if gelu:
        return torch.ops.aten.gelu_(x) if not records_autograd(x) else F.gelu(x)
    return x


def fused_conv_gelu(x: torch.Tensor, conv: nn.Conv2d, onednn: bool) -> torch.Tensor:
    """GELU(conv(x)) without autograd; with ``onednn`` in CPU inference (fp32, or bf16 autocast), one oneDNN call
    (GELU in the epilogue)."""
    dtype = _onednn_dtype(x, conv) if onednn and _ONEDNN_CONV is not None else None
    if dtype is not None and isinstance(conv.padding, tuple):
        return _ONEDNN_CONV(x.to(dtype), *_params_in(conv, dtype), list(conv.padding), list(conv.stride),
                            list(conv.dilation), conv.groups, "gelu", [], "none")
    return torch.ops.aten.gelu_(conv(x))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` (scale head_dim ** -0.5) for (B, heads, N, head_dim) queries.

    In CPU training with fewer (image, head) pairs than threads, the queries are split into that many times more
    heads, which share k and v: PyTorch's CPU attention backward runs one thread per (image, head), so at batch 1
    the one-head stage 1 ran its backward on one thread of two (measured, pvt_v2_b2 stage 1: 380 ms on two threads,
    336 ms on one; forward + backward 373-463 -> 268-310 ms split). Same outputs and gradients.
    """
    b, heads, n, d = q.shape
    split = torch.get_num_threads() // (b * heads)
    if split < 2 or n < 2 * split or q.device.type != "cpu" or not records_autograd(q) or torch.jit.is_tracing():
        return F.scaled_dot_product_attention(q, k, v)
    rows = -(-n // split)
    if rows * split != n:  # zero queries pad the last split; their outputs are dropped, so their gradients are zero
        q = F.pad(q, (0, 0, 0, rows * split - n))
    q = q.reshape(b, heads * split, rows, d)
    k, v = (t.unsqueeze(2).expand(-1, -1, split, -1, -1).flatten(1, 2) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v).reshape(b, heads, rows * split, d)[:, :, :n]


def _rows_within(elements: int, row_elements: int) -> int:
    """How many rows of ``row_elements`` elements fit in ``elements`` (at least one)."""
    return max(1, elements // max(1, row_elements))


def _row_bands(h: int, rows: int, halo: int) -> Iterator[Tuple[int, int, int, int]]:
    """Bands of ``rows`` grid rows covering 0..h: (top, bottom, lo, hi), where lo..hi adds up to ``halo`` rows on
    each side (what a (2 * halo + 1)-tall convolution reads to produce rows top..bottom)."""
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        yield top, bottom, max(0, top - halo), min(h, bottom + halo)


# Hidden activations (elements) of one band of token rows in chunked CPU inference: 16 MB in fp32, which stays in
# this CPU's L3 cache between fc1 and fc2 (measured: pvt_small stage-1 FFN 68 -> 38 ms at 800x1344).
_MLP_BAND_ELEMENTS = 1 << 22


def in_row_bands(x: torch.Tensor, h: int, w: int, hidden: int, out_dim: int, halo: int,
                 infer_rows: Callable[[torch.Tensor, int, int, int, int], torch.Tensor]) -> torch.Tensor:
    """CPU inference of a layer that works row by row on the (h, w) grid of tokens x (B, h * w, dim), widening to
    ``hidden`` channels inside, run over bands of rows with ``_MLP_BAND_ELEMENTS`` hidden activations each, so that
    these are read back from the cache instead of memory. ``infer_rows(band_x, band_h, w, first, rows)`` gives the
    layer's (B, rows * w, out_dim) output for rows first .. first + rows of band_x, a band of band_h rows that adds
    up to ``halo`` rows on each side (what a (2 * halo + 1)-tall convolution reads). Off the CPU, in tracing, or
    when one band would hold every row, one call on all of x.
    """
    b, n, _ = x.shape
    band = _rows_within(_MLP_BAND_ELEMENTS, b * w * hidden)
    if x.device.type != "cpu" or band >= h or n != h * w or torch.jit.is_tracing():
        return infer_rows(x, h, w, 0, h)
    out = x.new_empty((b, n, out_dim))
    for top, bottom, lo, hi in _row_bands(h, band, halo):
        out[:, top * w:bottom * w] = infer_rows(x[:, lo * w:hi * w].contiguous(), hi - lo, w, top - lo, bottom - top)
    return out


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


class GeluLinear(torch.autograd.Function):
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


class DwConvGeluLinear(torch.autograd.Function):
    """v2's FFN after fc1, ``F.linear(F.gelu(dwconv(a)), weight, bias)``, saving only a (fc1's output, which the
    conv's weight gradient needs anyway): the backward recomputes the depthwise conv and the GELU.

    Against ``GeluLinear`` (which keeps the conv's output too) one hidden-size activation per block fewer, for one
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
        g = F.gelu(conv(tokens_to_map(a, h, w))).flatten(2).transpose(1, 2)
        ctx.conv_dtype = g.dtype
        return F.linear(g, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, conv_weight, conv_bias, weight = ctx.saved_tensors
        h, w, groups = ctx.geometry
        dt = ctx.conv_dtype
        needs = ctx.needs_input_grad  # a, h, w, conv, conv_weight, conv_bias, weight, bias
        a_map = tokens_to_map(a, h, w).to(dt)
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
                tokens_to_map(grad_y, h, w), a_map, cw, None if conv_bias is None else [conv_bias.shape[0]],
                [1, 1], [1, 1], [1, 1], False, [0, 0], groups, wanted)
            if grad_a_map is not None:
                grad_a = grad_a_map.flatten(2).transpose(1, 2).to(a.dtype)
            if grad_cw is not None:
                grad_cw = grad_cw.to(conv_weight.dtype)
            if grad_cb is not None:
                grad_cb = grad_cb.to(conv_bias.dtype)
        return grad_a, None, None, None, grad_cw, grad_cb, grad_w, grad_b


# Hidden activations (elements) per band of one image's rows in banded CPU training (``BandedMlp``): 8 MB in fp32,
# which glibc serves from its heap (pvt_d2.cpu_allocator) and the CPU cache holds between the band's passes.
_TRAIN_BAND_ELEMENTS = 1 << 21


def _train_bands(b: int, h: int, w: int, hidden: int) -> List[Tuple[int, int, int, int]]:
    """The bands of ``BandedMlp``, (first image, last image + 1, top row, bottom row), each with at most about
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


class BandedMlp(torch.autograd.Function):
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
