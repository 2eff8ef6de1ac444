"""COCO-format datasets named in a config as ``coco:<json file>:<image folder>``, registered on first use.

This lets users train and evaluate on their own COCO-format data from the command line, without writing Python.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, List

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["COCO_SPEC_PREFIX", "register_coco_specs"]

COCO_SPEC_PREFIX = "coco:"


def _register(name: str) -> int:
    """Register one ``coco:<json>:<images>`` name; returns its number of categories."""
    parts = name[len(COCO_SPEC_PREFIX):].split(":")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"dataset name {name!r} must look like 'coco:<json file>:<image folder>'")
    json_file, image_root = parts
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"dataset {name!r}: json file {json_file!r} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"dataset {name!r}: image folder {image_root!r} does not exist")
    with open(json_file) as f:
        categories = sorted(json.load(f).get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"dataset {name!r}: {json_file} has no 'categories'")
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_file, image_root)
        # Known before any loading, so that an evaluator built first (--eval-only) maps ids correctly.
        MetadataCatalog.get(name).set(
            thing_classes=[c["name"] for c in categories],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        )
    return len(categories)


def register_coco_specs(cfg: CfgNode) -> List[str]:
    """Register every ``coco:...`` name in ``DATASETS.TRAIN``/``TEST`` and check the head's class count."""
    names: Iterable[str] = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    registered = []
    for name in names:
        if not name.startswith(COCO_SPEC_PREFIX):
            continue
        num = _register(name)
        registered.append(name)
        arch = cfg.MODEL.META_ARCHITECTURE
        key = {"GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES", "RetinaNet": "MODEL.RETINANET.NUM_CLASSES"}.get(arch)
        if key is not None:
            node = cfg.MODEL.ROI_HEADS if arch == "GeneralizedRCNN" else cfg.MODEL.RETINANET
            if node.NUM_CLASSES != num:
                raise ValueError(f"{key}={node.NUM_CLASSES} but dataset {name!r} has {num} categories; "
                                 f"add '{key} {num}' to the command line")
    return registered
