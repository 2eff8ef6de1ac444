"""The config keys that pvt_d2 adds to detectron2's defaults, and building a config from a file."""
import logging
import os
from typing import Sequence

import torch
from detectron2.config import get_cfg
from detectron2.config import CfgNode as CN

__all__ = ["add_pvt_config", "setup_cfg"]


def add_pvt_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.PVT`` with its defaults (in place).

    ``cfg.MODEL.BACKBONE.FREEZE_AT`` (detectron2's ResNet freezing, default 2) is ignored by the PVT builders, so a
    ResNet-based base config never freezes PVT stages silently: freezing is ``MODEL.PVT.FROZEN_STAGES`` only.
    """
    cfg.MODEL.PVT = CN()
    # Variant: pvt_tiny/small/medium/large (v1) or pvt_v2_b0..b5, pvt_v2_b2_li (pvt_d2.modeling.pvt.PVT_ARCHS).
    cfg.MODEL.PVT.ARCH = "pvt_v2_b0"
    # Stages the backbone outputs (strides 4, 8, 16, 32); FPN's IN_FEATURES must be among them.
    cfg.MODEL.PVT.OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
    # Stochastic depth of the last block, ramped linearly from 0 over all blocks (the authors' detection value).
    cfg.MODEL.PVT.DROP_PATH_RATE = 0.1
    # Freeze (requires_grad=False, eval mode) the first k stages: 0 = none, 1..4.
    cfg.MODEL.PVT.FROZEN_STAGES = 0
    # Recompute block activations in the backward pass (torch.utils.checkpoint): less memory, one more block forward.
    cfg.MODEL.PVT.CHECKPOINT_ACTIVATIONS = False
    _add_training_config(cfg)


def _add_training_config(cfg: CN) -> None:
    """Solver, input and test keys of pvt_d2's Trainer (``pvt_d2.engine``), with detectron2-compatible defaults."""
    # "ADAMW" (the authors' recipes) or "SGD" (detectron2's default optimizer).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # AdamW betas.
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # Weight decay of position embeddings, cls tokens and DETR queries; None = SOLVER.WEIGHT_DECAY.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = None
    # LR multiplier for parameters under `backbone.` (DETR trains its backbone at 0.1x).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # Exponent of the "WarmupPolyLR" schedule: lr = base * (1 - it / MAX_ITER) ** POLY_POWER.
    cfg.SOLVER.POLY_POWER = 0.9
    # Autocast dtype when SOLVER.AMP.ENABLED: "float16" (GPU) or "bfloat16" (GPU or CPU; CPU always uses bf16).
    cfg.SOLVER.AMP.DTYPE = "float16"
    # Read MODEL.WEIGHTS with full pickle (may run code from the file). Only for files you trust.
    cfg.MODEL.WEIGHTS_TRUST_PICKLE = False
    # After training or --eval-only, draw predictions on this many images of DATASETS.TEST[0] into
    # OUTPUT_DIR/predictions/<dataset>/ (0 = none).
    cfg.TEST.VIS_NUM_IMAGES = 0


def setup_cfg(config_file: str, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """detectron2's defaults + pvt_d2's keys, merged with ``config_file`` and ``KEY VALUE`` overrides.

    ``MODEL.DEVICE`` "cuda" falls back to "cpu" (with a log line) on a machine without CUDA.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = get_cfg()
    add_pvt_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("CUDA is not available: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
