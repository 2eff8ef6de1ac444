"""Prediction in scripts: a DefaultPredictor that reads PVT weights, and drawing with detectron2's Visualizer.

    from pvt_d2 import Predictor, setup_cfg
    cfg = setup_cfg("configs/Synthetic/mask_rcnn_pvt_v2_b0_shapes.yaml", ["MODEL.WEIGHTS", "output/model_final.pth"])
    predictor = Predictor(cfg)
    outputs = predictor(image_bgr)            # as DefaultPredictor: {"instances": ...} or {"sem_seg": ...}
    drawing = predictor.draw(image_bgr, outputs)   # RGB uint8 array
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

from .engine.checkpointer import PVTCheckpointer

__all__ = ["Predictor", "visualize_images", "visualize_test_set", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class Predictor(DefaultPredictor):
    """detectron2's DefaultPredictor (BGR image in, model outputs out) built with pvt_d2's checkpointer.

    Args:
        cfg: a config from ``pvt_d2.setup_cfg``; ``MODEL.WEIGHTS`` is loaded unless ``model`` is given.
        model: an already built model (e.g. the one just trained), used as is in eval mode.
    """

    def __init__(self, cfg: CfgNode, model: Optional[torch.nn.Module] = None):
        self.cfg = cfg.clone()
        if model is None:
            model = build_model(self.cfg)
            PVTCheckpointer(model, trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE).load(cfg.MODEL.WEIGHTS)
        self.model = model
        self.model.eval()
        if cfg.DATASETS.TEST:
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        else:
            self.metadata = MetadataCatalog.get("__unused")
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={self.input_format!r}: the predictor takes 'RGB' or 'BGR'")

    def draw(self, image_bgr: np.ndarray, outputs: Dict, score_threshold: float = 0.5) -> np.ndarray:
        """The image (RGB) with the predicted instances or semantic segmentation drawn by detectron2's Visualizer."""
        vis = Visualizer(image_bgr[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        if "sem_seg" in outputs:
            out = vis.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
        elif "instances" in outputs:
            inst = outputs["instances"].to("cpu")
            out = vis.draw_instance_predictions(inst[inst.scores >= score_threshold])
        else:
            raise ValueError(f"nothing to draw in outputs with keys {sorted(outputs)}")
        return out.get_image()


def _list_images(inputs: Iterable[str]) -> List[str]:
    paths: List[str] = []
    for p in inputs:
        if os.path.isdir(p):
            paths += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p):
            paths.append(p)
        else:
            raise FileNotFoundError(f"--input {p!r} is neither an image file nor a directory")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {list(inputs)}")
    return paths


def visualize_images(predictor: Predictor, inputs: Iterable[str], output_dir: str,
                     limit: Optional[int] = None, score_threshold: float = 0.5) -> List[str]:
    """Predict on image files (or every image in directories) and write ``<output_dir>/<name>.png`` drawings."""
    from PIL import Image

    paths = _list_images(inputs)[:limit]
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in paths:
        image = read_image(path, format="BGR")  # PIL decoding, as the evaluation data loader reads images
        drawing = predictor.draw(image, predictor(image), score_threshold)
        dst = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(drawing).save(dst)
        written.append(dst)
    logger.info("Wrote %d prediction images to %s", len(written), output_dir)
    return written


def visualize_test_set(cfg: CfgNode, model: torch.nn.Module, num_images: Optional[int] = None) -> Optional[str]:
    """Draw predictions on the first ``TEST.VIS_NUM_IMAGES`` images of ``DATASETS.TEST[0]``; returns the folder."""
    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm

    num_images = cfg.TEST.VIS_NUM_IMAGES if num_images is None else num_images
    if num_images <= 0 or not cfg.DATASETS.TEST or not comm.is_main_process():
        return None
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    was_training = model.training
    dataset = cfg.DATASETS.TEST[0]
    files = [d["file_name"] for d in DatasetCatalog.get(dataset)[:num_images]]
    out_dir = os.path.join(cfg.OUTPUT_DIR, "predictions", dataset)
    with torch.no_grad():
        visualize_images(Predictor(cfg, model=model), files, out_dir)
    model.train(was_training)
    return out_dir
