"""PVT as a detectron2 backbone, and the registered builders that read ``cfg.MODEL.PVT``.

Checkpoint keys: ``PVTBackbone``'s parameters are ``PVT``'s (``patch_embed1.proj.weight``, ...). Inside the FPN
builders' models they sit under ``backbone.bottom_up.``; with ``build_pvt_backbone`` alone, under ``backbone.``
(see ``pvt_d2.checkpoint.to_detectron2_checkpoint``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from .pvt import PVT

__all__ = [
    "PVTBackbone",
    "STAGE_NAMES",
    "build_pvt_backbone",
    "build_pvt_fpn_backbone",
    "build_retinanet_pvt_fpn_backbone",
]

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
_STRIDES = (4, 8, 16, 32)


def _check_features(names: Sequence[str], what: str, valid: Sequence[str] = STAGE_NAMES) -> None:
    if not names:
        raise ValueError(f"{what} is empty; valid features: {', '.join(valid)}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{what}: unknown feature(s) {unknown}; valid features: {', '.join(valid)}")


class PVTBackbone(PVT, Backbone):
    """A ``PVT`` with detectron2's ``Backbone`` interface.

    ``forward(images)`` takes (B, C, H, W) images and returns ``{name: (B, C_i, H / s_i, W / s_i)}`` for the names
    in ``out_features`` ("stage1".."stage4", strides 4, 8, 16, 32, channels ``embed_dims``). Inputs should be padded
    to a multiple of ``size_divisibility`` (32) so that FPN's top-down sums line up.

    Args:
        arch: a name in ``PVT_ARCHS``, or None with explicit spec fields (see ``PVT``).
        out_features: the stages to output, a subset of ("stage1", "stage2", "stage3", "stage4").
        frozen_stages: 0 freezes nothing; k in 1..4 freezes all parameters of the first k stages (patch embedding,
            v1 position embedding, blocks, v2 stage norm: requires_grad=False) and keeps them in eval mode
            (no stochastic depth), whatever ``train()`` is called with.
        drop_path_rate, checkpoint_activations, recompute_gelu, onednn_inference, chunked_mlp_inference,
            chunked_mlp_training, in_chans, pretrain_img_size, **spec: see ``PVT``.
    """

    def __init__(self, arch: Optional[str] = "pvt_v2_b0", out_features: Sequence[str] = STAGE_NAMES, *,
                 frozen_stages: int = 0, drop_path_rate: float = 0.0, checkpoint_activations: bool = False,
                 recompute_gelu: bool = True, onednn_inference: bool = True, chunked_mlp_inference: bool = True,
                 chunked_mlp_training: bool = True, in_chans: int = 3, pretrain_img_size: int = 224, **spec):
        _check_features(list(out_features), "out_features")
        if not isinstance(frozen_stages, int) or not 0 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be an int in 0..4, got {frozen_stages!r}")
        out_features = sorted(set(out_features), key=STAGE_NAMES.index)
        super().__init__(arch, drop_path_rate=drop_path_rate,
                         out_indices=[STAGE_NAMES.index(n) for n in out_features],
                         checkpoint_activations=checkpoint_activations, recompute_gelu=recompute_gelu,
                         onednn_inference=onednn_inference, chunked_mlp_inference=chunked_mlp_inference,
                         chunked_mlp_training=chunked_mlp_training, in_chans=in_chans,
                         pretrain_img_size=pretrain_img_size, **spec)
        self._out_features = list(out_features)
        self._out_feature_strides = {n: _STRIDES[STAGE_NAMES.index(n)] for n in out_features}
        self._out_feature_channels = {n: self.embed_dims[STAGE_NAMES.index(n)] for n in out_features}
        self.frozen_stages = frozen_stages
        for i in range(frozen_stages):
            for p in self.stage_parameters(i):
                p.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "PVTBackbone":
        super().train(mode)
        for i in range(getattr(self, "frozen_stages", 0)):
            for m in self.stage_modules(i):
                m.eval()
        return self

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"PVTBackbone expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        return dict(zip(self._out_features, super().forward(x)))


def _pvt_from_cfg(cfg, input_shape: ShapeSpec, out_features: Sequence[str]) -> PVTBackbone:
    pvt = cfg.MODEL.PVT
    return PVTBackbone(
        arch=pvt.ARCH,
        out_features=out_features,
        frozen_stages=pvt.FROZEN_STAGES,
        drop_path_rate=pvt.DROP_PATH_RATE,
        checkpoint_activations=pvt.CHECKPOINT_ACTIVATIONS,
        recompute_gelu=pvt.RECOMPUTE_GELU,
        onednn_inference=pvt.ONEDNN_INFERENCE,
        chunked_mlp_inference=pvt.CHUNKED_MLP_INFERENCE,
        chunked_mlp_training=pvt.CHUNKED_MLP_TRAINING,
        in_chans=input_shape.channels,
    )


@BACKBONE_REGISTRY.register()
def build_pvt_backbone(cfg, input_shape: ShapeSpec) -> PVTBackbone:
    """PVT alone: ``cfg.MODEL.PVT.*`` (see ``pvt_d2.config``), features ``cfg.MODEL.PVT.OUT_FEATURES``.

    ``cfg.MODEL.BACKBONE.FREEZE_AT`` (ResNet's stem/stage freezing) is ignored: use ``cfg.MODEL.PVT.FROZEN_STAGES``.
    """
    _check_features(list(cfg.MODEL.PVT.OUT_FEATURES), "MODEL.PVT.OUT_FEATURES")
    return _pvt_from_cfg(cfg, input_shape, cfg.MODEL.PVT.OUT_FEATURES)


def _fpn_bottom_up(cfg, input_shape: ShapeSpec) -> PVTBackbone:
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    _check_features(in_features, "MODEL.FPN.IN_FEATURES")
    out_features = list(cfg.MODEL.PVT.OUT_FEATURES)
    _check_features(out_features, "MODEL.PVT.OUT_FEATURES")
    missing = [f for f in in_features if f not in out_features]
    if missing:
        raise ValueError(f"MODEL.FPN.IN_FEATURES {in_features} needs {missing}, which MODEL.PVT.OUT_FEATURES "
                         f"{out_features} does not produce")
    return _pvt_from_cfg(cfg, input_shape, out_features)


@BACKBONE_REGISTRY.register()
def build_pvt_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """PVT + FPN for R-CNN: P2-P5 from ``cfg.MODEL.FPN.IN_FEATURES`` (e.g. stage1..stage4) and P6 by max-pooling.

    ``cfg.MODEL.BACKBONE.FREEZE_AT`` is ignored: use ``cfg.MODEL.PVT.FROZEN_STAGES``.
    """
    bottom_up = _fpn_bottom_up(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_pvt_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """PVT + FPN for RetinaNet: P3-P5 from ``cfg.MODEL.FPN.IN_FEATURES`` (stage2..stage4); P6 = 3x3/2 conv of the
    stage-4 map (the FPN's input, as the authors' ``add_extra_convs="on_input"``), P7 = 3x3/2 conv of ReLU(P6).

    ``cfg.MODEL.BACKBONE.FREEZE_AT`` is ignored: use ``cfg.MODEL.PVT.FROZEN_STAGES``.
    """
    bottom_up = _fpn_bottom_up(cfg, input_shape)
    if "stage4" not in bottom_up.output_shape():
        raise ValueError(f"RetinaNet's P6 is computed from stage4; MODEL.PVT.OUT_FEATURES "
                         f"{list(cfg.MODEL.PVT.OUT_FEATURES)} must include it")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["stage4"].channels, out_channels, in_feature="stage4"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
