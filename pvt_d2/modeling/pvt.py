"""Pyramid Vision Transformer v1 and v2: building blocks, the 4-stage model and the table of variants.

Parameter names follow the authors' released checkpoints (``patch_embed{i}``, ``pos_embed{i}``, ``block{i}.{j}``,
``norm{i}``), so their files load with one rename (``mlp.dwconv.dwconv`` -> ``mlp.dwconv``, see
``pvt_d2.checkpoint.to_pvt_state_dict``). Stage indices in code are 0-based; names are 1-based like the authors'.

Token tensors are (B, N, C) with N = H * W in row-major order; feature maps are NCHW. Stage outputs are returned as
NCHW views of the token tensors (channels-last memory layout, no copy); every PyTorch op accepts them, call
``.contiguous()`` if an op of your own needs the default layout.

The layers here read as the plain formulation; the faster and leaner paths that the config switches turn on (fused
oneDNN inference, banded FFNs, recomputed activations) live in ``pvt_d2.modeling.fast_ops``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast_ops import (BandedMlp, ContiguousGrad, DwConvGeluLinear, GeluLinear, attention, cpu_matmul_dtype,
                       fused_conv_gelu, fused_linear, in_row_bands, records_autograd, tokens_to_map)

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


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced copy of the tokens.

    dim: channels. num_heads: heads (head_dim = dim / num_heads, scale head_dim**-0.5).
    sr_ratio: keys/values from a stride-sr_ratio convolution (kernel sr_ratio) then LayerNorm; 1 = no reduction.
    linear: linear SRA instead: AdaptiveAvgPool2d(7) -> 1x1 conv -> LayerNorm -> GELU (sr_ratio is then unused).
    onednn: CPU inference (fp32, or bf16 autocast) runs the q, kv and proj layers through ``fused_linear``'s oneDNN
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
        q = fused_linear(x, self.q, self.onednn).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        if self.reduce:
            y = tokens_to_map(x, h, w)
            if self.linear:
                y = self.pool(y)
            y = self.norm(self.sr(y).flatten(2).transpose(1, 2))
            if self.linear:
                y = self.act(y)
        else:
            y = x
        kv = fused_linear(y, self.kv, self.onednn)
        k, v = kv.unflatten(-1, (2, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)
        return fused_linear(out.transpose(1, 2).reshape(B, N, C), self.proj, self.onednn)


class Mlp(nn.Module):
    """The feed-forward network: fc1 -> [ReLU] -> [depthwise 3x3 conv] -> GELU -> fc2.

    dim / hidden_dim: channels in and out / in the middle. dwconv: v2's depthwise conv on the (hidden, h, w) map.
    relu: ReLU after fc1 (v2 ``_li``). recompute_gelu: in training, keep the GELU's input instead of its output
    for the backward and recompute the GELU there (``GeluLinear``), and in v2 keep only the depthwise conv's input
    and recompute the conv too (``DwConvGeluLinear``): one hidden-size activation less per block, same
    gradients. Without autograd the GELU runs in place. onednn: CPU inference (fp32, or bf16 autocast) runs fc1
    and fc2 through ``fused_linear``'s oneDNN path, the GELU fused into fc1 (v1) or into the depthwise conv (v2,
    ``fused_conv_gelu``).
    chunked: CPU inference runs the FFN over bands of token rows (``in_row_bands``;
    v2's depthwise conv gets one extra row above and below), so that the hidden activations are read back from
    the cache instead of memory: same outputs, faster.
    chunked_training: CPU training, in fp32 or under bf16 autocast, runs the whole FFN band by band and saves only
    its input (``BandedMlp``): same gradients, faster and leaner; ``recompute_gelu`` then only matters elsewhere
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
            return fused_linear(fused_linear(x, self.fc1, self.onednn, gelu=True), self.fc2, self.onednn)
        x = fused_linear(x, self.fc1, self.onednn)
        if self.relu:
            x = F.relu(x, inplace=True)
        if self.dwconv is not None:  # depthwise conv + GELU fused
            x = fused_conv_gelu(tokens_to_map(x, h, w), self.dwconv, self.onednn)[:, :, first:first + rows]
            x = x.flatten(2).transpose(1, 2)
        else:
            x = torch.ops.aten.gelu_(x)
        return fused_linear(x, self.fc2, self.onednn)

    def _infer(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not self.chunked:
            return self._infer_rows(x, h, w, 0, h)
        halo = 1 if self.dwconv is not None else 0  # the 3x3 conv reads one row above and below
        return in_row_bands(x, h, w, self.fc1.out_features, self.fc2.out_features, halo, self._infer_rows)

    def _banded_dtype(self, x: torch.Tensor) -> Optional[torch.dtype]:
        """The matmul dtype of ``BandedMlp`` if this call runs it (chunked_training, on the CPU with autograd, in
        fp32 or under bf16 autocast: ``cpu_matmul_dtype``), else None."""
        if not (self.chunked_training and (x.requires_grad or self.fc1.weight.requires_grad)
                and self.fc1.bias is not None and self.fc2.bias is not None
                and (self.dwconv is None or self.dwconv.bias is not None)):
            return None
        return cpu_matmul_dtype(x, self.fc1)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._infer(x, h, w)
        banded = self._banded_dtype(x)
        if banded is not None:
            conv_w, conv_b = (None, None) if self.dwconv is None else (self.dwconv.weight, self.dwconv.bias)
            grid = (h, w) if self.dwconv is not None else (x.shape[1], 1)  # without the conv, any rows of tokens
            return BandedMlp.apply(x, *grid, self.relu, self.fc1.weight, self.fc1.bias, conv_w, conv_b,
                                    self.fc2.weight, self.fc2.bias, banded)
        x = fused_linear(x, self.fc1, self.onednn)
        if self.relu:
            x = F.relu(x, inplace=True)
        if (self.dwconv is not None and self.recompute_gelu and records_autograd(x)
                and not torch.jit.is_tracing()):
            conv = self.dwconv
            return DwConvGeluLinear.apply(x, h, w, conv, conv.weight, conv.bias, self.fc2.weight, self.fc2.bias)
        if self.dwconv is not None:
            x = self.dwconv(tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)
        if not records_autograd(x):
            return fused_linear(torch.ops.aten.gelu_(x), self.fc2, self.onednn)  # x is this function's temporary
        if self.recompute_gelu and not torch.jit.is_tracing():
            return GeluLinear.apply(x, self.fc2.weight, self.fc2.bias)
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
            fc1, the conv and the GELU band by band (``BandedMlp``): no hidden-size tensor is ever whole; same
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
        if records_autograd(x) and not torch.jit.is_tracing():
            x = ContiguousGrad.apply(x)
        return tokens_to_map(x, h, w)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i in range(self.num_run_stages):
            x = self.forward_stage(i, x)
            outs.append(x)
        return [outs[i] for i in self.out_indices]

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, out_indices={self.out_indices}, "
                f"checkpoint_activations={self.checkpoint_activations}")
