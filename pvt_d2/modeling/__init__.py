"""PVT models: the backbone network and its variants table, the detectron2 Backbone and builders, the classifier."""
from .pvt import PVT, PVT_ARCHS, PVTSpec
from .classifier import PVTClassifier
from .backbone import PVTBackbone, build_pvt_backbone, build_pvt_fpn_backbone, build_retinanet_pvt_fpn_backbone
from .detr import Detr  # noqa: F401  (registers the Detr meta-architecture)
from .semantic_fpn import SemanticFPNHead  # noqa: F401  (registers the Semantic FPN head)

__all__ = [
    "PVT", "PVT_ARCHS", "PVTSpec", "PVTClassifier", "PVTBackbone", "build_pvt_backbone", "build_pvt_fpn_backbone",
    "build_retinanet_pvt_fpn_backbone", "Detr", "SemanticFPNHead",
]
