"""PVT + DETR: Hungarian matching, the set loss, padding masks, parameter count, configs end to end, inference."""
from __future__ import annotations

import glob
import itertools
import math
import os
import time

import pytest
import torch
from torch import nn

import pvt_d2  # noqa: F401  (compat fixes first; registers Detr)
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from pvt_d2.config import add_pvt_config, setup_cfg
from pvt_d2.engine.optimizer import build_optimizer, optimizer_param_groups
from pvt_d2.modeling.detr import (
    Detr, HungarianMatcher, SetCriterion, SinePositionalEncoding, Transformer, box_cxcywh_to_xyxy,
    generalized_box_iou,
)
from pvt_helpers import ROOT

DETR_CONFIGS = sorted(
    [os.path.join(ROOT, "configs", "Base-PVT-DETR.yaml")]
    + glob.glob(os.path.join(ROOT, "configs", "COCO-Detection", "detr_*.yaml"))
    + glob.glob(os.path.join(ROOT, "configs", "Synthetic", "detr_*.yaml"))
)
# Shrinks any DETR config to a CPU-test size (the backbone stays the config's).
TINY_DETR = [
    "MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.NHEADS", "4", "MODEL.DETR.DIM_FEEDFORWARD", "64",
    "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "2", "MODEL.DETR.NUM_OBJECT_QUERIES", "10",
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
]


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """n random normalized cxcywh boxes inside the unit square."""
    xy0 = torch.rand(n, 2, generator=generator) * 0.6
    wh = torch.rand(n, 2, generator=generator) * 0.35 + 0.05
    return torch.cat([xy0 + wh / 2, wh], dim=1)


# --- boxes -----------------------------------------------------------------------------------------------------
def test_giou_of_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    # overlap: IoU 1/7, enclosing 9, union 7 -> 1/7 - 2/9; identical: 1; disjoint: 0 - (8 - 5) / 8
    expected = torch.tensor([[1 / 7 - 2 / 9, 1.0, -3 / 8]])
    torch.testing.assert_close(generalized_box_iou(a, b), expected)
    torch.testing.assert_close(generalized_box_iou(a.expand(3, 4), b, pairwise=False), expected[0])


# --- matcher ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_matcher_total_cost_equals_brute_force_minimum(seed):
    g = torch.Generator().manual_seed(seed)
    num_queries, num_classes = 5, 3
    batch_targets = [int(n) for n in torch.randint(0, num_queries + 1, (3,), generator=g)]
    logits = torch.randn(len(batch_targets), num_queries, num_classes + 1, generator=g)
    boxes = _random_boxes(len(batch_targets) * num_queries, g).view(len(batch_targets), num_queries, 4)
    targets = [{"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": _random_boxes(n, g)}
               for n in batch_targets]
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    costs = matcher.cost_matrices(logits, boxes, targets)
    for (rows, cols), cost, t in zip(matcher(logits, boxes, targets), costs, targets):
        n = len(t["labels"])
        assert len(rows) == len(cols) == n and sorted(cols.tolist()) == list(range(n))
        assert len(set(rows.tolist())) == n  # one target per query
        best = min((sum(cost[q, j].item() for j, q in enumerate(perm))
                    for perm in itertools.permutations(range(num_queries), n)), default=0.0)
        assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


def test_matcher_cost_is_the_weighted_sum_of_class_l1_and_giou_terms():
    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(1, 4, 3, generator=g), _random_boxes(4, g)[None]
    t = {"labels": torch.tensor([1, 0]), "boxes": _random_boxes(2, g)}
    cost = HungarianMatcher(cost_class=0.5, cost_bbox=3.0, cost_giou=1.5).cost_matrices(logits, boxes, [t])[0]
    prob = logits[0].softmax(-1)
    for q in range(4):
        for j in range(2):
            l1 = (boxes[0, q] - t["boxes"][j]).abs().sum()
            giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes[0, q:q + 1]), box_cxcywh_to_xyxy(t["boxes"][j:j + 1]))
            expected = -0.5 * prob[q, t["labels"][j]] + 3.0 * l1 - 1.5 * giou[0, 0]
            assert cost[q, j].item() == pytest.approx(expected.item(), abs=1e-6)


def test_matcher_rejects_more_targets_than_queries():
    g = torch.Generator().manual_seed(0)
    t = {"labels": torch.zeros(3, dtype=torch.int64), "boxes": _random_boxes(3, g)}
    with pytest.raises(ValueError, match="NUM_OBJECT_QUERIES"):
        HungarianMatcher()(torch.randn(1, 2, 4), _random_boxes(2, g)[None], [t])


# --- criterion -------------------------------------------------------------------------------------------------
def test_losses_equal_hand_computed_values_on_two_boxes():
    # Two classes + no-object; three queries. Target 0: class 0 at (0.5, 0.5, 0.2, 0.2), predicted exactly by
    # query 0. Target 1: class 1 at (0.25, 0.25, 0.1, 0.1), predicted by query 2 shifted 0.05 right. Query 1 is far.
    targets = [{"labels": torch.tensor([0, 1]),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]])}]
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.5, 1.0], [0.0, 1.0, -1.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1], [0.3, 0.25, 0.1, 0.1]]])
    criterion = SetCriterion(2, HungarianMatcher(), no_object_weight=0.1, class_weight=1.0, l1_weight=5.0,
                             giou_weight=2.0)
    aux = {"pred_logits": logits.clone(), "pred_boxes": boxes.clone()}
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": [aux]}, targets)

    def ce(row, target):
        return -row[target] + math.log(sum(math.exp(v) for v in row))

    rows = logits[0].tolist()
    # query 0 -> class 0 (weight 1), query 2 -> class 1 (weight 1), query 1 -> no-object (weight 0.1)
    loss_ce = (ce(rows[0], 0) + ce(rows[2], 1) + 0.1 * ce(rows[1], 2)) / (1 + 1 + 0.1)
    # L1: 0 for query 0, 0.05 for query 2; over 2 target boxes, times 5
    loss_bbox = 5.0 * (0.0 + 0.05) / 2
    # query 2 vs target 1: x spans [0.25, 0.35] vs [0.2, 0.3], same y span 0.1: intersection 0.005, union 0.015,
    # enclosing 0.015 -> GIoU 1/3; query 0 GIoU 1. (1 - GIoU) summed over 2 target boxes, times 2
    loss_giou = 2.0 * ((1 - 1.0) + (1 - 1 / 3)) / 2
    expected = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
    assert set(losses) == set(expected) | {k + "_0" for k in expected}
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, abs=1e-5), k
        assert losses[k + "_0"].item() == pytest.approx(v, abs=1e-5), k + "_0"


def test_loss_gradients_reach_logits_and_boxes_and_empty_targets_are_allowed():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    boxes = _random_boxes(8, g).view(2, 4, 4).requires_grad_(True)
    targets = [{"labels": torch.tensor([1]), "boxes": _random_boxes(1, g)},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = SetCriterion(2, HungarianMatcher())({"pred_logits": logits, "pred_boxes": boxes}, targets)
    sum(losses.values()).backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad[0].abs().sum() > 0
    assert boxes.grad[1].abs().sum() == 0  # no targets in image 1: its boxes are unsupervised


# --- transformer and padding -----------------------------------------------------------------------------------
def test_sine_encoding_counts_valid_pixels_only():
    enc = SinePositionalEncoding(8)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[1, :, 3:] = True  # image 1 is 3x3 inside a 3x5 batch
    pos = enc(mask)
    assert pos.shape == (2, 16, 3, 5)
    alone = enc(torch.zeros(1, 3, 3, dtype=torch.bool))
    torch.testing.assert_close(pos[1:, :, :, :3], alone)


def test_transformer_never_attends_to_padding():
    torch.manual_seed(0)
    model = Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64,
                        num_queries=5).eval()
    enc = SinePositionalEncoding(16)
    small = torch.randn(1, 32, 3, 4)
    big = torch.randn(1, 32, 5, 6)
    padded = torch.randn(1, 32, 5, 6) * 100  # garbage where image 0 is padding
    padded[:, :, :3, :4] = small
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[0, 3:, :] = True
    mask[0, :, 4:] = True
    with torch.no_grad():
        alone = model(small, torch.zeros(1, 3, 4, dtype=torch.bool), enc(torch.zeros(1, 3, 4, dtype=torch.bool)))[0]
        batched = model(torch.cat([padded, big]), mask, enc(mask))[0]
    assert alone.shape == (2, 1, 5, 32)
    torch.testing.assert_close(batched[:, :1], alone, atol=1e-5, rtol=0)


class _PatchBackbone(Backbone):
    """A stride-32 patchify convolution: features of real pixels do not depend on the padding around them."""

    def __init__(self, channels: int = 24):
        super().__init__()
        self.proj = nn.Conv2d(3, channels, 32, stride=32)
        self.channels = channels

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self):
        return {"stage4": ShapeSpec(channels=self.channels, stride=32)}

    def forward(self, x):
        return {"stage4": self.proj(x)}


def _tiny_detr(num_classes: int = 3, score_mode: str = "query", topk: int = 100, queries: int = 7) -> Detr:
    transformer = Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64,
                              num_queries=queries)
    return Detr(backbone=_PatchBackbone(), in_feature="stage4", transformer=transformer, num_classes=num_classes,
                criterion=SetCriterion(num_classes, HungarianMatcher()), pixel_mean=[100.0, 110.0, 120.0],
                pixel_std=[50.0, 55.0, 60.0], test_topk=topk, score_mode=score_mode)


def test_detr_outputs_for_an_image_are_unchanged_when_batched_with_a_larger_one():
    torch.manual_seed(0)
    model = _tiny_detr().eval()
    a = {"image": torch.rand(3, 70, 100) * 255, "height": 140, "width": 200}
    b = {"image": torch.rand(3, 160, 130) * 255}
    with torch.no_grad():
        alone = model.forward_outputs(model.preprocess_image([a]))
        batched = model.forward_outputs(model.preprocess_image([a, b]))
        assert batched["pred_logits"].shape[0] == 2
        torch.testing.assert_close(batched["pred_logits"][:1], alone["pred_logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched["pred_boxes"][:1], alone["pred_boxes"], atol=1e-5, rtol=0)
        det_alone, det_batched = model([a])[0]["instances"], model([a, b])[0]["instances"]
    torch.testing.assert_close(det_batched.pred_boxes.tensor, det_alone.pred_boxes.tensor, atol=1e-3, rtol=0)
    assert torch.equal(det_batched.pred_classes, det_alone.pred_classes)


def test_feature_mask_marks_cells_whose_first_pixel_is_padding():
    model = _tiny_detr()
    images = model.preprocess_image([{"image": torch.zeros(3, 70, 100)}, {"image": torch.zeros(3, 128, 64)}])
    assert images.tensor.shape[-2:] == (128, 128)
    mask = model.feature_mask(images, (4, 4))
    assert mask[0].tolist() == [[False] * 4] * 3 + [[True] * 4]  # rows 0..2 start at 0, 32, 64 < 70
    assert mask[1].tolist() == [[False, False, True, True]] * 4


# --- inference format ------------------------------------------------------------------------------------------
def _fixed_outputs(model: Detr, logits: torch.Tensor, boxes: torch.Tensor):
    model.forward_outputs = lambda images: {"pred_logits": logits.expand(len(images), -1, -1),  # type: ignore
                                            "pred_boxes": boxes.expand(len(images), -1, -1), "aux_outputs": []}


def test_inference_returns_instances_in_original_image_coordinates():
    torch.manual_seed(0)
    model = _tiny_detr(queries=7).eval()
    logits = torch.randn(1, 7, 4)
    boxes = torch.rand(1, 7, 4) * 0.5 + 0.25
    boxes[0, 0] = torch.tensor([0.5, 0.5, 1.0, 1.0])  # the whole image
    logits[0, 0] = torch.tensor([10.0, 0.0, 0.0, 0.0])  # confidently class 0
    _fixed_outputs(model, logits, boxes)
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 96) * 255, "height": 128, "width": 192}])
    inst = out[0]["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (128, 192)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert len(inst) == 7  # one per query in "query" mode
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    torch.testing.assert_close(inst.pred_boxes.tensor[0], torch.tensor([0.0, 0.0, 192.0, 128.0]))
    assert inst.pred_classes[0] == 0 and inst.scores[0] > 0.99
    expected_prob = logits[0].softmax(-1)[:, :3].max(-1).values.sort(descending=True).values
    torch.testing.assert_close(inst.scores, expected_prob)


def test_inference_keeps_at_most_top_k_and_query_class_mode_ranks_all_pairs():
    torch.manual_seed(0)
    num_classes, queries = 20, 30
    logits, boxes = torch.randn(1, queries, num_classes + 1), torch.rand(1, queries, 4) * 0.5 + 0.25
    image = {"image": torch.rand(3, 64, 64) * 255}
    model = _tiny_detr(num_classes=num_classes, score_mode="query_class", topk=100, queries=queries).eval()
    _fixed_outputs(model, logits, boxes)
    with torch.no_grad():
        inst = model([image])[0]["instances"]
    assert len(inst) == 100
    prob = logits[0].softmax(-1)[:, :-1]
    torch.testing.assert_close(inst.scores, prob.flatten().topk(100).values)
    assert len(set(inst.pred_classes.tolist())) > 1 and inst.pred_classes.max() < num_classes
    model = _tiny_detr(num_classes=num_classes, score_mode="query", topk=10, queries=queries).eval()
    _fixed_outputs(model, logits, boxes)
    with torch.no_grad():
        assert len(model([image])[0]["instances"]) == 10


# --- configs ---------------------------------------------------------------------------------------------------
def test_parameter_total_of_pvt_small_detr_with_80_classes_is_the_papers():
    cfg = setup_cfg(os.path.join(ROOT, "configs", "COCO-Detection", "detr_pvt_small_50ep.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert total / 1e6 == pytest.approx(41.65, abs=0.05)
    assert backbone / 1e6 == pytest.approx(23.97, abs=0.01)
    assert model.transformer.query_embed.shape == (100, 256)


def test_detr_config_defaults_and_optimizer_groups():
    cfg = get_cfg()
    add_pvt_config(cfg)
    d = cfg.MODEL.DETR
    assert (d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS) == (
        100, 256, 8, 2048, 6, 6)
    assert (d.COST_CLASS, d.COST_L1, d.COST_GIOU, d.CLASS_WEIGHT, d.L1_WEIGHT, d.GIOU_WEIGHT) == (1, 5, 2, 1, 5, 2)
    assert d.NO_OBJECT_WEIGHT == 0.1 and d.IN_FEATURE == "stage4" and d.DEEP_SUPERVISION
    cfg = setup_cfg(os.path.join(ROOT, "configs", "COCO-Detection", "detr_pvt_v2_b0_50ep.yaml"),
                    TINY_DETR + ["SOLVER.WEIGHT_DECAY_EMBED", "0.0"])
    model = build_model(cfg)
    groups = optimizer_param_groups(cfg, model)
    query = model.transformer.query_embed
    group = next(g for g in groups if any(p is query for p in g["params"]))
    assert group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(1e-4)
    patch = model.backbone.patch_embed1.proj.weight
    group = next(g for g in groups if any(p is patch for p in g["params"]))
    assert group["lr"] == pytest.approx(1e-5) and group["weight_decay"] == 1e-4


def test_unknown_in_feature_is_rejected_with_the_available_ones():
    cfg = setup_cfg(os.path.join(ROOT, "configs", "Base-PVT-DETR.yaml"),
                    TINY_DETR + ["MODEL.DETR.IN_FEATURE", "stage3"], freeze=False)
    with pytest.raises(ValueError, match="stage3.*stage4"):
        build_model(cfg)


def _detr_batch(sizes, num_classes):
    batch = []
    for i, (h, w) in enumerate(sizes):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.2, w - 2.0, h - 3.0]]))
        inst.gt_classes = torch.tensor([i % num_classes, (i + 1) % num_classes])
        batch.append({"image": torch.rand(3, h, w) * 255, "instances": inst, "height": 2 * h, "width": 2 * w})
    return batch


@pytest.mark.parametrize("config", DETR_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_detr_config_builds_trains_one_step_and_infers(config):
    cfg = setup_cfg(config, TINY_DETR)
    assert cfg.MODEL.META_ARCHITECTURE == "Detr"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, Detr)
    optimizer = build_optimizer(cfg, model)
    k = cfg.MODEL.DETR.NUM_CLASSES
    batch = _detr_batch([(64, 96), (80, 64)], k)
    model.train()
    with EventStorage():
        losses = model(batch)
    n_layers = cfg.MODEL.DETR.DEC_LAYERS
    assert len(losses) == 3 * n_layers and all(torch.isfinite(v) for v in losses.values())
    before = model.class_embed.weight.detach().clone()
    optimizer.zero_grad()
    sum(losses.values()).backward()
    assert model.backbone.patch_embed1.proj.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.class_embed.weight)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    for x, o in zip(batch, out):
        inst = o["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert len(inst) <= min(100, cfg.MODEL.DETR.NUM_OBJECT_QUERIES)
        assert inst.pred_classes.max() < k
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= x["width"]).all() and (b[:, 3] <= x["height"]).all()


def test_trainer_trains_detr_on_shapes_unchanged(tmp_path):
    from pvt_d2.data.shapes import register_shapes_datasets
    from pvt_d2.engine import Trainer

    register_shapes_datasets(str(tmp_path / "shapes"), num_train=4, num_val=2, prefix="detr_trainer_shapes")
    cfg = setup_cfg(os.path.join(ROOT, "configs", "Synthetic", "detr_pvt_v2_b0_shapes.yaml"), TINY_DETR + [
        "DATASETS.TRAIN", "('detr_trainer_shapes_train',)", "DATASETS.TEST", "('detr_trainer_shapes_val',)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "INPUT.MIN_SIZE_TRAIN", "(96,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
        "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "0", "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # DefaultTrainer.train returns them only with TEST.EXPECTED_RESULTS
    assert trainer.iter == 2  # detectron2 leaves iter at MAX_ITER after the last step
    assert "bbox" in results and "AP50" in results["bbox"]


# --- memorization ----------------------------------------------------------------------------------------------
# Memorization recipe (pinned here, independent of later changes to the shapes config): no augmentation, native
# image size (192..320 px), a 128-wide 2+3-layer transformer without dropout, 10 queries, AdamW 2e-4 everywhere.
MEMORIZE_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.PVT.DROP_PATH_RATE", "0.0", "MODEL.DETR.HIDDEN_DIM", "128", "MODEL.DETR.NHEADS", "8",
    "MODEL.DETR.DIM_FEEDFORWARD", "512", "MODEL.DETR.ENC_LAYERS", "2", "MODEL.DETR.DEC_LAYERS", "3",
    "MODEL.DETR.DROPOUT", "0.0", "SOLVER.BASE_LR", "0.0002", "SOLVER.BACKBONE_MULTIPLIER", "1.0",
    "SOLVER.WARMUP_FACTOR", "0.001", "MODEL.DETR.NUM_OBJECT_QUERIES", "10", "INPUT.RANDOM_FLIP", "none",
    "INPUT.MIN_SIZE_TRAIN", "(0,)", "INPUT.MIN_SIZE_TEST", "0", "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.MAX_ITER", "300", "SOLVER.STEPS", "(250,)", "SOLVER.WARMUP_ITERS", "30", "DATALOADER.NUM_WORKERS", "0",
    "TEST.VIS_NUM_IMAGES", "0", "SOLVER.CHECKPOINT_PERIOD", "100000",
]


@pytest.mark.slow
def test_detr_memorizes_eight_shapes_images(tmp_path):
    """DETR learns: trained on 8 shapes images, it finds their boxes again (AP50 >= 90 on those images)."""
    from pvt_d2.data.shapes import register_shapes_datasets
    from pvt_d2.engine import Trainer

    register_shapes_datasets(str(tmp_path / "shapes"), num_train=8, num_val=2, prefix="detr_memo")
    cfg = setup_cfg(os.path.join(ROOT, "configs", "Synthetic", "detr_pvt_v2_b0_shapes.yaml"), MEMORIZE_OPTS + [
        "DATASETS.TRAIN", "('detr_memo_train',)", "DATASETS.TEST", "('detr_memo_train',)",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results
    print(f"memorization: {cfg.SOLVER.MAX_ITER} iterations in {time.perf_counter() - start:.0f} s, "
          f"bbox {results['bbox']}")
    assert results["bbox"]["AP50"] >= 90

