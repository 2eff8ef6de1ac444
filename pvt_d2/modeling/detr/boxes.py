"""Box conversions and generalized IoU (Rezatofighi et al., 2019) for DETR's matcher and loss."""
from __future__ import annotations

import torch

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "generalized_box_iou"]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes (center x, center y, width, height) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes (x0, y0, x1, y1) -> (center x, center y, width, height)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, pairwise: bool = True,
                        eps: float = 1e-7) -> torch.Tensor:
    """GIoU = IoU - (|C| - |A u B|) / |C|, C the smallest box enclosing A and B; in [-1, 1].

    Args:
        boxes1: (N, 4) XYXY boxes; boxes2: (M, 4) XYXY boxes (M == N when not ``pairwise``).
        pairwise: True gives the (N, M) matrix of all pairs, False the (N,) values of matching rows.
        eps: added to the denominators, so that degenerate (zero-area) boxes give finite values.
    """
    if pairwise:
        boxes1, boxes2 = boxes1[:, None, :], boxes2[None, :, :]
    elif boxes1.shape != boxes2.shape:
        raise ValueError(f"elementwise GIoU needs boxes of one shape, got {tuple(boxes1.shape)} and "
                         f"{tuple(boxes2.shape)}")
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    lt_c = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    rb_c = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclosing = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / (enclosing + eps)
