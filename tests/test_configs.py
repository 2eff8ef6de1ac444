"""Every detection config under configs/ builds its model, trains one step and runs one inference on CPU.

(DETR and Semantic FPN configs are walked the same way in test_detr.py and test_semantic_fpn.py.)
"""
import glob
import os

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from pvt_d2 import Trainer, setup_cfg
from pvt_d2.engine.optimizer import build_optimizer
from pvt_helpers import ROOT

CONFIGS = sorted(
    c for c in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
    if os.path.basename(c).startswith(("mask_rcnn_", "retinanet_"))
)


def _inputs(h, w, num_classes):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 10.0, 60.0, 50.0]]))
    inst.gt_classes = torch.tensor([0, num_classes - 1])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 6:30, 4:40] = True
    masks[1, 10:50, 20:60] = True
    inst.gt_masks = BitMasks(masks)
    return [{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "height": h, "width": w,
             "instances": inst}]


def test_every_arch_has_both_detectors():
    names = {os.path.basename(c) for c in CONFIGS}
    for arch in ("pvt_tiny", "pvt_small", "pvt_medium", "pvt_large", "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2",
                 "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5"):
        assert f"retinanet_{arch}_fpn_1x.yaml" in names and f"mask_rcnn_{arch}_fpn_1x.yaml" in names
    for arch in ("pvt_small", "pvt_v2_b0", "pvt_v2_b2"):
        assert f"mask_rcnn_{arch}_fpn_3x_ms.yaml" in names


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.relpath(c, ROOT) for c in CONFIGS])
def test_config_builds_trains_one_step_and_infers(config):
    cfg = setup_cfg(config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" \
        else cfg.MODEL.RETINANET.NUM_CLASSES
    model.train()
    with EventStorage(0):
        losses = model(_inputs(64, 96, num_classes))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8), "height": 140,
                      "width": 180}])
    assert out[0]["instances"].image_size == (140, 180)
