"""The dataset mapper each model family trains and tests with, chosen from the config."""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper

from .augmentations import build_sem_seg_augmentation

__all__ = ["build_mapper"]


def build_mapper(cfg: CfgNode, is_train: bool) -> DatasetMapper:
    """detectron2's DatasetMapper for detection, instance and semantic segmentation.

    Augmentations: detectron2's from the config (``ResizeShortestEdge`` from ``INPUT.MIN/MAX_SIZE_*``, flip, and
    ``INPUT.CROP`` before the resize), except in training with ``INPUT.SEM_SEG_AUG.ENABLED``: then the PVT authors'
    Semantic FPN pipeline (``pvt_d2.data.augmentations.build_sem_seg_augmentation``).
    """
    if is_train and cfg.INPUT.SEM_SEG_AUG.ENABLED:
        kwargs = DatasetMapper.from_config(cfg, is_train=True)
        kwargs["augmentations"] = build_sem_seg_augmentation(cfg)
        return DatasetMapper(**kwargs)
    return DatasetMapper(cfg, is_train)
