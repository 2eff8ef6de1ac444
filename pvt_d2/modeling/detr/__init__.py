"""PVT + DETR: the ``Detr`` meta-architecture (registered with detectron2), its transformer, matcher and loss."""
from .boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, generalized_box_iou
from .criterion import SetCriterion
from .detr import MLP, SCORE_MODES, Detr
from .matcher import HungarianMatcher
from .transformer import SinePositionalEncoding, Transformer, TransformerDecoderLayer, TransformerEncoderLayer

__all__ = [
    "Detr", "MLP", "SCORE_MODES", "HungarianMatcher", "SetCriterion", "Transformer", "TransformerEncoderLayer",
    "TransformerDecoderLayer", "SinePositionalEncoding", "box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh",
    "generalized_box_iou",
]
