"""The config keys that pvt_d2 adds to detectron2's defaults, and building a config from a file."""
import logging
import os
from typing import Sequence

import torch
from detectron2.config import get_cfg

from .data.coco_spec import register_coco_specs
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
    # Keep each FFN's GELU input, not its output, for the backward and recompute the GELU (v2: keep the depthwise
    # conv's input and recompute the conv and the GELU): less memory, same gradients. Used wherever
    # CHUNKED_MLP_TRAINING does not apply: GPUs, fp16 autocast, or with that switch off.
    cfg.MODEL.PVT.RECOMPUTE_GELU = True
    # CPU inference (fp32 or bf16 autocast): oneDNN linears with the bias (and v1's GELU) fused, v2's dwconv + GELU
    # fused: faster.
    cfg.MODEL.PVT.ONEDNN_INFERENCE = True
    # CPU inference: each FFN over bands of token rows whose hidden activations stay in the CPU cache: faster.
    cfg.MODEL.PVT.CHUNKED_MLP_INFERENCE = True
    # CPU training (fp32, or bf16 autocast): each FFN band by band (rows of one image, or several small images),
    # keeping only its input for the backward (which recomputes it band by band): same gradients, faster, less memory.
    cfg.MODEL.PVT.CHUNKED_MLP_TRAINING = True
    _add_training_config(cfg)
    _add_detr_config(cfg)
    _add_sem_seg_config(cfg)


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
    register_coco_specs(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def _add_sem_seg_config(cfg: CN) -> None:
    """Keys of the Semantic FPN head (``pvt_d2.modeling.semantic_fpn``) and of its training augmentation
    (``pvt_d2.data.augmentations``); the crop is set by detectron2's INPUT.CROP keys plus SINGLE_CATEGORY_MAX_AREA."""
    # Dropout2d probability before the head's 1x1 classifier (the authors' 0.1); read by "SemanticFPNHead" only.
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
    cfg.INPUT.SEM_SEG_AUG = CN()
    # Train with the authors' Semantic FPN pipeline (resize by SCALE x ratio, crop INPUT.CROP.SIZE with at most
    # INPUT.CROP.SINGLE_CATEGORY_MAX_AREA of one class, flip, photometric distortion, pad to the crop size) instead
    # of DatasetMapper's (ResizeShortestEdge from INPUT.MIN/MAX_SIZE_TRAIN, flip). Testing is unchanged.
    cfg.INPUT.SEM_SEG_AUG.ENABLED = False
    # (long edge, short edge) the image is fitted into, keeping its aspect ratio, before the random ratio.
    cfg.INPUT.SEM_SEG_AUG.SCALE = (2048, 512)
    # Range of the random ratio (uniform) that multiplies SCALE.
    cfg.INPUT.SEM_SEG_AUG.RATIO_RANGE = (0.5, 2.0)
    # Random brightness, contrast, saturation and hue, each applied with probability 0.5.
    cfg.INPUT.SEM_SEG_AUG.PHOTOMETRIC = True
    # Pad crops smaller than INPUT.CROP.SIZE (bottom/right) to it: image with MODEL.PIXEL_MEAN, label with
    # MODEL.SEM_SEG_HEAD.IGNORE_VALUE.
    cfg.INPUT.SEM_SEG_AUG.PAD_TO_CROP = True
    # Largest share of a crop's labelled pixels one class may take (up to 10 tries; 1.0 = any crop). Named as in
    # detectron2's DeepLab project; read by INPUT.SEM_SEG_AUG's crop.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0


def _add_detr_config(cfg: CN) -> None:
    """``cfg.MODEL.DETR``: the ``Detr`` meta-architecture (pvt_d2.modeling.detr); defaults are the paper's DETR."""
    cfg.MODEL.DETR = CN()
    # Object classes K (the class head has K + 1 logits, the last is "no object").
    cfg.MODEL.DETR.NUM_CLASSES = 80
    # Learned object queries: the most detections per image and the most objects an image may have in training.
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = 100
    # Transformer width (also the input projection's and heads' width).
    cfg.MODEL.DETR.HIDDEN_DIM = 256
    # Attention heads.
    cfg.MODEL.DETR.NHEADS = 8
    # Hidden channels of the transformer's feed-forward networks.
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 2048
    # Encoder layers (0 = the decoder attends to the projected backbone features directly).
    cfg.MODEL.DETR.ENC_LAYERS = 6
    # Decoder layers (>= 1).
    cfg.MODEL.DETR.DEC_LAYERS = 6
    # Dropout in the transformer (attention weights, after attention, inside and after the FFN).
    cfg.MODEL.DETR.DROPOUT = 0.1
    # Supervise every decoder layer's output (auxiliary losses), not only the last.
    cfg.MODEL.DETR.DEEP_SUPERVISION = True
    # Cross-entropy weight of the "no object" class (relative to 1 for object classes).
    cfg.MODEL.DETR.NO_OBJECT_WEIGHT = 0.1
    # Loss weights: cross-entropy, L1 of normalized (cx, cy, w, h) boxes, 1 - GIoU.
    cfg.MODEL.DETR.CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.L1_WEIGHT = 5.0
    cfg.MODEL.DETR.GIOU_WEIGHT = 2.0
    # Hungarian matching cost weights: -probability of the target class, L1 of boxes, -GIoU.
    cfg.MODEL.DETR.COST_CLASS = 1.0
    cfg.MODEL.DETR.COST_L1 = 5.0
    cfg.MODEL.DETR.COST_GIOU = 2.0
    # The backbone output fed to the transformer (must be in MODEL.PVT.OUT_FEATURES).
    cfg.MODEL.DETR.IN_FEATURE = "stage4"
    # Inference scoring, top TEST.DETECTIONS_PER_IMAGE kept: "query" (each query's best class, as DETR and the
    # authors) or "query_class" (top (query, class) pairs over all classes).
    cfg.MODEL.DETR.TEST_SCORE_MODE = "query"
