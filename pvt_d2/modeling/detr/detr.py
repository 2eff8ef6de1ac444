"""DETR (Carion et al., 2020) with a PVT backbone, as a detectron2 meta-architecture ("Detr").

The PVT paper's detector (PVT_FACTS §7): one backbone stage (stage 4, stride 32) -> 1x1 conv to the transformer
width -> encoder-decoder transformer with learned object queries -> per query a class (K classes + no-object) and a
box (cx, cy, w, h) in [0, 1] relative to the image before padding.

Padding: images are padded to a multiple of 32 (``ImageList``); the feature cells whose top-left input pixel is
padding are masked out of every attention of the transformer and out of the positional encoding. The PVT backbone
itself sees the padded batch, as in the authors' code (its attention is global over all tokens), so an image's
detections can still depend slightly on the other images of its batch through the backbone.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torch.nn import functional as F

from .boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .transformer import SinePositionalEncoding, Transformer

__all__ = ["Detr", "MLP", "SCORE_MODES"]

# How inference turns (query, class) probabilities into at most TEST.DETECTIONS_PER_IMAGE detections:
#   "query":       DETR/the authors' code: each query's best class (softmax without no-object), the top-k queries;
#   "query_class": the top-k (query, class) pairs over all queries and classes (a query may give several classes).
SCORE_MODES = ("query", "query_class")


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (none after the last).

    Args:
        input_dim, hidden_dim, output_dim: channels in, between layers, out.
        num_layers: Linear layers (>= 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP needs >= 1 layer, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@META_ARCH_REGISTRY.register()
class Detr(nn.Module):
    """DETR on one feature map of a detectron2 backbone.

    ``forward(batched_inputs)`` takes detectron2's list of dicts (``image`` (C, H, W) in ``INPUT.FORMAT`` 0-255,
    ``instances`` with ``gt_boxes`` XYXY absolute in the resized image and ``gt_classes`` for training, optional
    ``height``/``width`` of the original image for inference). Training returns the loss dict of ``SetCriterion``;
    inference returns ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` in original image coordinates
    (``detector_postprocess``), at most ``test_topk`` per image.

    Args:
        backbone: a detectron2 ``Backbone``; its ``size_divisibility`` (at least 32 is used) pads the batch.
        in_feature: the backbone output fed to the transformer (PVT: "stage4").
        transformer: the ``Transformer``; its ``d_model`` is the width of the input projection and the heads.
        num_classes: K, object classes (no-object is an extra logit).
        criterion: the ``SetCriterion`` (with its matcher).
        pixel_mean, pixel_std: per-channel normalization of the input images, in ``INPUT.FORMAT`` order.
        deep_supervision: also supervise every earlier decoder layer (auxiliary losses).
        test_topk: detections kept per image at inference (COCO: 100).
        score_mode: one of ``SCORE_MODES`` (see there).
    """

    @configurable
    def __init__(self, *, backbone: Backbone, in_feature: str, transformer: Transformer, num_classes: int,
                 criterion: SetCriterion, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 deep_supervision: bool = True, test_topk: int = 100, score_mode: str = "query"):
        super().__init__()
        shapes = backbone.output_shape()
        if in_feature not in shapes:
            raise ValueError(f"MODEL.DETR.IN_FEATURE={in_feature!r} is not a backbone output; the backbone gives "
                             f"{list(shapes)} (for PVT see MODEL.PVT.OUT_FEATURES)")
        if score_mode not in SCORE_MODES:
            raise ValueError(f"MODEL.DETR.TEST_SCORE_MODE={score_mode!r} is not one of {SCORE_MODES}")
        if test_topk < 1:
            raise ValueError(f"TEST.DETECTIONS_PER_IMAGE must be >= 1, got {test_topk}")
        self.backbone = backbone
        self.in_feature = in_feature
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.input_proj = nn.Conv2d(shapes[in_feature].channels, hidden_dim, kernel_size=1)
        self.position_encoding = SinePositionalEncoding(hidden_dim // 2, normalize=True)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_classes = num_classes
        self.criterion = criterion
        self.deep_supervision = deep_supervision
        self.test_topk = test_topk
        self.score_mode = score_mode
        self.size_divisibility = max(int(backbone.size_divisibility), 32)
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} differ "
                             "in length")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        d = cfg.MODEL.DETR
        backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        transformer = Transformer(
            d_model=d.HIDDEN_DIM, nhead=d.NHEADS, num_encoder_layers=d.ENC_LAYERS, num_decoder_layers=d.DEC_LAYERS,
            dim_feedforward=d.DIM_FEEDFORWARD, dropout=d.DROPOUT, num_queries=d.NUM_OBJECT_QUERIES,
        )
        matcher = HungarianMatcher(cost_class=d.COST_CLASS, cost_bbox=d.COST_L1, cost_giou=d.COST_GIOU)
        criterion = SetCriterion(d.NUM_CLASSES, matcher, no_object_weight=d.NO_OBJECT_WEIGHT,
                                 class_weight=d.CLASS_WEIGHT, l1_weight=d.L1_WEIGHT, giou_weight=d.GIOU_WEIGHT)
        return {
            "backbone": backbone, "in_feature": d.IN_FEATURE, "transformer": transformer,
            "num_classes": d.NUM_CLASSES, "criterion": criterion, "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD, "deep_supervision": d.DEEP_SUPERVISION,
            "test_topk": cfg.TEST.DETECTIONS_PER_IMAGE, "score_mode": d.TEST_SCORE_MODE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: Sequence[Dict]) -> ImageList:
        """Normalize and pad the images to a multiple of ``size_divisibility`` (padding value 0 after normalizing)."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    @staticmethod
    def feature_mask(images: ImageList, feature_hw: Sequence[int]) -> torch.Tensor:
        """(B, h, w) bool, True where a feature cell's top-left input pixel is padding."""
        pad_h, pad_w = images.tensor.shape[-2:]
        h, w = feature_hw
        rows = torch.arange(h, device=images.tensor.device) * pad_h / h  # top-left input pixel of each cell
        cols = torch.arange(w, device=images.tensor.device) * pad_w / w
        masks = [(rows[:, None] >= ih) | (cols[None, :] >= iw) for ih, iw in images.image_sizes]
        return torch.stack(masks)

    def forward_outputs(self, images: ImageList) -> Dict:
        """``pred_logits`` (B, Q, K+1), ``pred_boxes`` (B, Q, 4) and ``aux_outputs`` of the earlier layers."""
        features = self.backbone(images.tensor)[self.in_feature]
        mask = self.feature_mask(images, features.shape[-2:])
        src = self.input_proj(features)
        pos = self.position_encoding(mask)
        hs, _ = self.transformer(src, mask, pos)
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        aux = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_outputs": aux}

    def prepare_targets(self, batched_inputs: Sequence[Dict], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per image ``labels`` (T,) and ``boxes`` (T, 4) cxcywh normalized by the unpadded image size."""
        targets = []
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            if "instances" not in x:
                raise ValueError("Detr in training mode needs 'instances' in every input dict (the mapper must run "
                                 "with is_train=True)")
            inst = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)
            targets.append({"labels": inst.gt_classes.to(torch.int64), "boxes": boxes})
        return targets

    def forward(self, batched_inputs: Sequence[Dict]):
        images = self.preprocess_image(batched_inputs)
        outputs = self.forward_outputs(images)
        if self.training:
            if not self.deep_supervision:
                outputs["aux_outputs"] = []
            return self.criterion(outputs, self.prepare_targets(batched_inputs, images))
        results = self.inference(outputs["pred_logits"], outputs["pred_boxes"], images.image_sizes)
        processed = []
        for r, x, size in zip(results, batched_inputs, images.image_sizes):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            processed.append({"instances": detector_postprocess(r, height, width)})
        return processed

    def inference(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                  image_sizes: Sequence[Sequence[int]]) -> List[Instances]:
        """Top-``test_topk`` detections per image (see ``SCORE_MODES``), boxes XYXY in the unpadded input image."""
        prob = pred_logits.float().softmax(-1)[..., :-1]
        results = []
        for p, boxes, (h, w) in zip(prob, pred_boxes.float(), image_sizes):
            if self.score_mode == "query":
                scores, labels = p.max(-1)
                scores, queries = scores.topk(min(self.test_topk, scores.numel()))
                labels = labels[queries]
            else:
                scores, flat = p.flatten().topk(min(self.test_topk, p.numel()))
                queries = torch.div(flat, self.num_classes, rounding_mode="floor")
                labels = flat % self.num_classes
            xyxy = box_cxcywh_to_xyxy(boxes[queries]) * torch.tensor([w, h, w, h], device=boxes.device)
            r = Instances((h, w))
            r.pred_boxes = Boxes(xyxy)
            r.scores = scores
            r.pred_classes = labels
            results.append(r)
        return results
