"""The dataset mapper each model family trains and tests with, chosen from the config."""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper

__all__ = ["build_mapper"]


def build_mapper(cfg: CfgNode, is_train: bool):
    """detectron2's DatasetMapper with the config's augmentations (detection, instance and semantic segmentation)."""
    return DatasetMapper(cfg, is_train)
