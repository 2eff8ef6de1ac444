"""The Semantic FPN head of the PVT authors: detectron2's ``SemSegFPNHead`` plus dropout before the classifier.

The model is detectron2's ``SemanticSegmentor`` with ``build_pvt_fpn_backbone`` (P2-P5 feed the head; the builder's
P6 is a max-pool of P5 without parameters, so leaving it unused costs DDP nothing) and this head, registered in
``SEM_SEG_HEADS_REGISTRY`` as "SemanticFPNHead" (``MODEL.SEM_SEG_HEAD.NAME``).

Per input level (stride s): ``log2(s / common_stride)`` (at least one) 3x3 conv + norm + ReLU blocks, each followed
by x2 bilinear upsampling while above the common stride; the levels are summed at the common stride (4), then
dropout, then a 1x1 conv to the classes. Training: logits upsampled to the (padded) input size, cross-entropy
ignoring ``ignore_value``. Inference: logits upsampled by ``common_stride``. Parameters are those of detectron2's
head: with a norm, the 3x3 convs have no bias and the norm has 2 parameters per channel.

Norm on CPU: use "naiveSyncBN" (``MODEL.SEM_SEG_HEAD.NORM``, the Base config's value). It is plain BatchNorm in one
process and all-reduces the batch statistics over every process otherwise, which works with gloo (CPU) and NCCL.
detectron2's "SyncBN" is ``torch.nn.SyncBatchNorm`` on torch > 1.5, which raises "SyncBatchNorm expected input tensor
to be on GPU" in multi-process CPU training; "BN" trains, but each process then keeps its own running statistics
(the Trainer does not broadcast buffers), so the ranks' models differ.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn

__all__ = ["SemanticFPNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(SemSegFPNHead):
    """detectron2's ``SemSegFPNHead`` with dropout before the 1x1 classifier, as the PVT authors' FPN head.

    Args:
        input_shape: the features the head reads (name -> channels and stride), e.g. FPN's p2..p5.
        num_classes: output classes (150 for ADE20K).
        conv_dims: channels of the 3x3 conv blocks (128 in the authors' head).
        common_stride: the stride, in input pixels, at which levels are summed and classified (4).
        loss_weight: factor on the cross-entropy loss.
        norm: the conv blocks' norm, a ``detectron2.layers.get_norm`` name ("naiveSyncBN", "BN", "GN", ...) or a
            callable ``channels -> nn.Module``; "" or None for none (convs then have a bias).
        ignore_value: label value excluded from the loss (255).
        dropout: probability of zeroing a channel of the summed features (``nn.Dropout2d``) in training; 0 for
            none (detectron2's head).
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, num_classes: int, conv_dims: int, common_stride: int,
                 loss_weight: float = 1.0, norm: Optional[Union[str, Callable]] = None, ignore_value: int = -1,
                 dropout: float = 0.0):
        super().__init__(input_shape, num_classes=num_classes, conv_dims=conv_dims, common_stride=common_stride,
                         loss_weight=loss_weight, norm=norm, ignore_value=ignore_value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.DROPOUT must be in [0, 1), got {dropout!r}")
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # The authors initialise the classifier with N(0, 0.01) and a zero bias.
        nn.init.normal_(self.predictor.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(head.IN_FEATURES)}: the backbone has no "
                             f"{missing}; it outputs {sorted(input_shape)}")
        ret = super().from_config(cfg, input_shape)
        ret["dropout"] = head.DROPOUT
        return ret

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.scale_heads[0](features[self.in_features[0]])
        for head, name in zip(self.scale_heads[1:], self.in_features[1:]):
            x = x + head(features[name])
        return self.predictor(self.dropout(x))
