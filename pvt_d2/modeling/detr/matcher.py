"""The Hungarian matcher: a one-to-one assignment of predictions to ground-truth boxes at minimum total cost."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """Assign each target box of an image to a distinct prediction (query) minimizing the summed pair costs.

    The cost of prediction i for target j is
    ``cost_class * (-p_i(c_j)) + cost_bbox * ||b_i - b_j||_1 + cost_giou * (-GIoU(b_i, b_j))``, with ``p_i`` the
    softmax class probabilities (no-object included in the softmax) and boxes (cx, cy, w, h) normalized to the image.
    Predictions left unassigned are "no object". There must be at least as many queries as targets in an image.

    Args:
        cost_class: weight of the negative probability of the target's class (DETR: 1).
        cost_bbox: weight of the L1 distance between the normalized boxes (5).
        cost_giou: weight of the negative generalized IoU (2).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0: set at least one of cost_class, cost_bbox, cost_giou")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def cost_matrices(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                      targets: Sequence[Dict[str, torch.Tensor]]) -> List[torch.Tensor]:
        """The (Q, T_b) cost matrix of every image b: logits (B, Q, K+1), boxes (B, Q, 4), targets ``labels`` (T_b,)
        and ``boxes`` (T_b, 4) normalized cxcywh."""
        prob = pred_logits.float().softmax(-1)
        boxes = pred_boxes.float()
        costs = []
        for b, t in enumerate(targets):
            tgt_boxes = t["boxes"].float()
            c = -self.cost_class * prob[b][:, t["labels"]]
            c = c + self.cost_bbox * torch.cdist(boxes[b], tgt_boxes, p=1)
            c = c - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes[b]), box_cxcywh_to_xyxy(tgt_boxes))
            costs.append(c)
        return costs

    @torch.no_grad()
    def forward(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                targets: Sequence[Dict[str, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """One ``(query_indices, target_indices)`` pair of int64 tensors per image, of length min(Q, T_b)."""
        num_queries = pred_logits.shape[1]
        out = []
        for b, c in enumerate(self.cost_matrices(pred_logits, pred_boxes, targets)):
            if c.shape[1] > num_queries:
                raise ValueError(f"image {b} has {c.shape[1]} target boxes but the model has only {num_queries} "
                                 "object queries; raise MODEL.DETR.NUM_OBJECT_QUERIES")
            rows, cols = linear_sum_assignment(c.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
