"""DETR's set loss: Hungarian matching, then classification and box losses on the matched pairs."""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher

__all__ = ["SetCriterion"]


def _num_boxes(targets: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> float:
    """Target boxes per process: this batch's count averaged over all processes (at least 1)."""
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(n.item(), 1.0)


class SetCriterion(nn.Module):
    """DETR's losses for one batch, already multiplied by their weights (their sum is the training loss).

    For every supervised decoder layer, predictions are matched to targets by ``matcher``; then

    - ``loss_ce``: cross-entropy over all queries, the target of an unmatched query being the no-object class K;
      class weights 1 for the K classes and ``no_object_weight`` for no-object, averaged with those weights
      (sum of w_i * CE_i / sum of w_i); times ``class_weight``;
    - ``loss_bbox``: L1 distance of matched normalized (cx, cy, w, h) boxes, summed, divided by the number of
      target boxes; times ``l1_weight``;
    - ``loss_giou``: 1 - GIoU of matched boxes, summed, divided by the number of target boxes; times
      ``giou_weight``.

    The number of target boxes is the batch's count, averaged over processes (``torch.distributed`` all-reduce when
    it is initialized), so that every process divides by the same number. Auxiliary outputs (earlier decoder layers)
    add the same three losses, keys suffixed ``_0``, ``_1``, ... from the first layer.

    Args:
        num_classes: K, the object classes (the logits have K + 1 entries, the last is no-object).
        matcher: the ``HungarianMatcher``.
        no_object_weight: cross-entropy weight of the no-object class (DETR: 0.1).
        class_weight, l1_weight, giou_weight: loss weights (DETR: 1, 5, 2).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, no_object_weight: float = 0.1,
                 class_weight: float = 1.0, l1_weight: float = 5.0, giou_weight: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight, self.l1_weight, self.giou_weight = class_weight, l1_weight, giou_weight
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def single_layer_losses(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                            targets: Sequence[Mapping[str, torch.Tensor]],
                            indices: List[Tuple[torch.Tensor, torch.Tensor]],
                            num_boxes: float) -> Dict[str, torch.Tensor]:
        """The three weighted losses of one decoder layer's predictions, given the matching ``indices``."""
        logits, boxes = pred_logits.float(), pred_boxes.float()
        device = logits.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"][j.to(device)] for t, (_, j) in zip(targets, indices)]).to(torch.int64)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(device))

        src = boxes[batch_idx, query_idx]
        tgt = torch.cat([t["boxes"][j.to(device)] for t, (_, j) in zip(targets, indices)]).float()
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        giou = generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt), pairwise=False)
        loss_giou = (1 - giou).sum() / num_boxes
        return {
            "loss_ce": self.class_weight * loss_ce,
            "loss_bbox": self.l1_weight * loss_bbox,
            "loss_giou": self.giou_weight * loss_giou,
        }

    def forward(self, outputs: Mapping, targets: Sequence[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """outputs: ``pred_logits`` (B, Q, K+1), ``pred_boxes`` (B, Q, 4) normalized cxcywh, optional
        ``aux_outputs`` (a list of such dicts); targets: per image ``labels`` (T,) int64 in [0, K) and ``boxes``
        (T, 4) normalized cxcywh."""
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        layers = [(outputs, "")] + [(aux, f"_{i}") for i, aux in enumerate(outputs.get("aux_outputs", []))]
        losses: Dict[str, torch.Tensor] = {}
        for out, suffix in layers:
            indices = self.matcher(out["pred_logits"], out["pred_boxes"], targets)
            layer_losses = self.single_layer_losses(out["pred_logits"], out["pred_boxes"], targets, indices,
                                                    num_boxes)
            losses.update({k + suffix: v for k, v in layer_losses.items()})
        return losses
