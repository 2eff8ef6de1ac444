"""Reference formulations of a PVT backbone on that PVT's own parameters, for ``pvt_d2.benchmark --reference`` and the
parity tests: ``UnfusedPVT`` (the authors' detection code's formulation: explicit attention, v1 position embeddings
resized on every forward, contiguous stage outputs) and timm's ``pvt_v2_*`` holding our tensors.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REFERENCE_KINDS", "UnfusedPVT", "reference_backbone", "ReferenceAsBackbone"]


def _unfused_attention(attn: nn.Module, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    B, N, C = x.shape
    heads = attn.num_heads
    q = attn.q(x).reshape(B, N, heads, C // heads).permute(0, 2, 1, 3)
    if attn.reduce:
        y = x.permute(0, 2, 1).reshape(B, C, h, w)
        if attn.linear:
            y = attn.pool(y)
        y = attn.norm(attn.sr(y).reshape(B, C, -1).permute(0, 2, 1))
        if attn.linear:
            y = attn.act(y)
    else:
        y = x
    kv = attn.kv(y).reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    weights = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))


def _unfused_mlp(mlp: nn.Module, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = mlp.fc1(x)
    if mlp.relu:
        x = F.relu(x)
    if mlp.dwconv is not None:
        B, N, C = x.shape
        x = mlp.dwconv(x.transpose(1, 2).reshape(B, C, h, w)).flatten(2).transpose(1, 2)
    return mlp.fc2(mlp.act(x))


class UnfusedPVT(nn.Module):
    """The plain eager formulation of a ``PVT``'s forward, on that PVT's own parameters (shared, not copied).

    What the authors' detection code does: explicit attention ``softmax(q kᵀ · scale) v`` (the (N, N') weights
    materialized), v1 position embeddings resized on every forward (when the grid differs from the learned one),
    a contiguous NCHW copy of every stage output, all four stages run. Same math as ``PVT``: the outputs agree to
    float rounding. ``forward`` returns the four stage outputs.
    """

    def __init__(self, pvt: nn.Module):
        super().__init__()
        self.pvt = pvt

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        from .modeling.pvt import drop_path

        p = self.pvt
        outs = []
        for i in range(4):
            embed = getattr(p, f"patch_embed{i + 1}")
            x = embed.proj(x)
            B, _, h, w = x.shape
            x = embed.norm(x.flatten(2).transpose(1, 2))
            if p.version == 1:
                pos = getattr(p, f"pos_embed{i + 1}")
                pos = pos[:, 1:] if i == 3 else pos
                gh, gw = p.pos_grids[i]
                if (h, w) != (gh, gw):
                    pos = F.interpolate(pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2), size=(h, w),
                                        mode="bilinear", align_corners=False).reshape(1, -1, h * w).permute(0, 2, 1)
                x = x + pos
            for blk in getattr(p, f"block{i + 1}"):
                x = x + drop_path(_unfused_attention(blk.attn, blk.norm1(x), h, w), blk.drop_path, self.training)
                x = x + drop_path(_unfused_mlp(blk.mlp, blk.norm2(x), h, w), blk.drop_path, self.training)
            if p.version == 2:
                x = getattr(p, f"norm{i + 1}")(x)
            x = x.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


def _timm_reference(pvt: nn.Module, drop_path_rate: float) -> Optional[nn.Module]:
    """timm's ``pvt_v2_*`` (features_only) holding ``pvt``'s tensors, or None if timm or the variant is missing."""
    arch = getattr(pvt, "arch", None)
    if pvt.version != 2 or arch is None:
        return None
    from .modeling.pvt import PVT_ARCHS

    if pvt.spec != PVT_ARCHS.get(arch):
        return None
    try:
        import timm
    except ImportError:
        return None
    if arch not in timm.list_models("pvt_v2*"):
        return None
    from .checkpoint import to_pvt_state_dict

    with torch.device("meta"):  # no memory: the parameters are ours, assigned below
        model = timm.create_model(arch, pretrained=False, features_only=True, drop_path_rate=drop_path_rate)
    timm_keys = list(model.state_dict())
    # our name -> timm's, by converting timm's names with the (tested) converter: values are the key indices
    converted = to_pvt_state_dict({k: torch.tensor(j) for j, k in enumerate(timm_keys)})
    ours = pvt.state_dict()
    if set(converted) != set(ours):
        return None
    model.load_state_dict({timm_keys[int(converted[k])]: v for k, v in ours.items()}, strict=True, assign=True)
    for name, param in model.named_parameters():
        param.requires_grad_(True)
    return model


REFERENCE_KINDS = ("auto", "timm", "unfused")


def reference_backbone(pvt: nn.Module, drop_path_rate: Optional[float] = None,
                       kind: str = "auto") -> Tuple[nn.Module, str]:
    """The reference formulation of ``pvt`` on its tensors: ``(module returning the 4 stage outputs, description)``.

    kind: "timm" (timm's ``pvt_v2_*``; a ValueError where it does not apply), "unfused" (``UnfusedPVT``, the
    authors' formulation) or "auto" (timm where it applies, else unfused). drop_path_rate: the reference's
    stochastic depth (None: that of ``pvt``'s last block).
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"reference kind {kind!r} is not one of {REFERENCE_KINDS}")
    if drop_path_rate is None:
        rates = [blk.drop_path for i in range(4) for blk in getattr(pvt, f"block{i + 1}")]
        drop_path_rate = rates[-1] if rates else 0.0
    arch = getattr(pvt, "arch", None) or "PVT"
    if kind != "unfused":
        ref = _timm_reference(pvt, drop_path_rate)
        if ref is not None:
            return ref, f"reference (timm {arch}, eager)"
        if kind == "timm":
            raise ValueError(f"--reference-kind timm: timm has no equivalent of {arch} (timm models standard "
                             "pvt_v2 variants only, and timm must be installed); use --reference-kind unfused")
    return UnfusedPVT(pvt), f"reference (unfused {arch}, eager: the authors' formulation)"


class ReferenceAsBackbone(nn.Module):
    """A 4-stage reference module returning ``{stage name: map}`` for the stages a PVTBackbone outputs."""

    def __init__(self, impl: nn.Module, out_features: Sequence[str]):
        super().__init__()
        self.impl = impl
        self.out_features = list(out_features)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        from .modeling.backbone import STAGE_NAMES

        outs = self.impl(x)
        return {n: outs[STAGE_NAMES.index(n)] for n in self.out_features}
