"""PVT as a detectron2 backbone: the Backbone contract, builders, freezing, detectors end to end, tracing."""
import pytest
import torch

import pvt_d2  # noqa: F401  (compat fixes first)
from detectron2.config import get_cfg
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import pvt_d2.modeling.backbone  # noqa: F401  (registers the builders)
from pvt_d2.config import add_pvt_config
from pvt_d2.modeling.backbone import PVTBackbone


def make_cfg(base=None, **pvt):
    cfg = get_cfg()
    add_pvt_config(cfg)
    if base is not None:
        cfg.merge_from_file(get_config_file(base))
    cfg.MODEL.DEVICE = "cpu"
    for k, v in pvt.items():
        setattr(cfg.MODEL.PVT, k.upper(), v)
    return cfg


def rcnn_cfg(**pvt):
    cfg = make_cfg("Base-RCNN-FPN.yaml", **pvt)
    cfg.MODEL.BACKBONE.NAME = "build_pvt_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    return cfg


def retinanet_cfg(**pvt):
    cfg = make_cfg("Base-RetinaNet.yaml", **pvt)
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_pvt_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["stage2", "stage3", "stage4"]
    return cfg


@pytest.mark.parametrize(
    "arch, channels", [("pvt_tiny", (64, 128, 320, 512)), ("pvt_v2_b0", (32, 64, 160, 256))]
)
def test_output_shape_matches_forward(arch, channels):
    backbone = PVTBackbone(arch).eval()
    shapes = backbone.output_shape()
    assert list(shapes) == ["stage1", "stage2", "stage3", "stage4"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == list(channels)
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert list(feats) == list(shapes)
    for name, f in feats.items():
        assert f.shape == (1, shapes[name].channels, 64 // shapes[name].stride, 96 // shapes[name].stride)


def test_out_features_subset():
    backbone = PVTBackbone("pvt_v2_b0", out_features=["stage4", "stage2"])
    assert list(backbone.output_shape()) == ["stage2", "stage4"]
    assert list(backbone(torch.randn(1, 3, 64, 64))) == ["stage2", "stage4"]


def test_unknown_feature_names_raise_value_error_listing_valid_ones():
    with pytest.raises(ValueError, match=r"\['res5'\].*stage1, stage2, stage3, stage4"):
        PVTBackbone("pvt_v2_b0", out_features=["res5"])
    cfg = rcnn_cfg()
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # left over from a ResNet config
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES.*valid features: stage1"):
        build_backbone(cfg)


def test_unknown_arch_in_config_raises_value_error_listing_archs():
    with pytest.raises(ValueError, match="unknown PVT arch 'pvt_v3'.*pvt_v2_b0"):
        build_backbone(rcnn_cfg(arch="pvt_v3"))


@pytest.mark.parametrize("arch", ["pvt_tiny", "pvt_v2_b0"])
def test_frozen_stages_freeze_params_and_stay_in_eval_mode(arch):
    backbone = PVTBackbone(arch, frozen_stages=2, drop_path_rate=0.1)
    backbone.train()
    for i in range(4):
        frozen = i < 2
        assert all(p.requires_grad != frozen for p in backbone.stage_parameters(i)), i
        assert all(m.training != frozen for m in backbone.stage_modules(i)), i
    n_frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    assert n_frozen == sum(p.numel() for i in range(2) for p in backbone.stage_parameters(i))
    with pytest.raises(ValueError, match="frozen_stages"):
        PVTBackbone(arch, frozen_stages=5)


def test_resnet_freeze_at_does_not_freeze_pvt():
    cfg = rcnn_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # detectron2's default, meant for ResNet
    backbone = build_backbone(cfg)
    assert all(p.requires_grad for p in backbone.parameters())
    cfg.MODEL.PVT.FROZEN_STAGES = 1
    bottom_up = build_backbone(cfg).bottom_up
    assert not any(p.requires_grad for p in bottom_up.stage_parameters(0))


def test_config_defaults():
    cfg = make_cfg()
    assert cfg.MODEL.PVT.ARCH == "pvt_v2_b0"
    assert cfg.MODEL.PVT.OUT_FEATURES == ["stage1", "stage2", "stage3", "stage4"]
    assert cfg.MODEL.PVT.DROP_PATH_RATE == 0.1
    assert cfg.MODEL.PVT.FROZEN_STAGES == 0
    assert cfg.MODEL.PVT.CHECKPOINT_ACTIVATIONS is False


def test_build_pvt_backbone_without_fpn():
    cfg = make_cfg(arch="pvt_tiny", out_features=["stage3", "stage4"])
    cfg.MODEL.BACKBONE.NAME = "build_pvt_backbone"
    backbone = build_backbone(cfg)
    assert isinstance(backbone, PVTBackbone)
    assert list(backbone.output_shape()) == ["stage3", "stage4"]


def test_retinanet_fpn_takes_p6_from_stage4():
    fpn = build_backbone(retinanet_cfg())
    shapes = fpn.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert fpn.top_block.in_feature == "stage4"
    assert fpn.top_block.p6.in_channels == 256  # pvt_v2_b0 stage 4 (equal to FPN width: check another arch)
    fpn_tiny = build_backbone(retinanet_cfg(arch="pvt_tiny"))
    assert fpn_tiny.top_block.p6.in_channels == 512


def _batch(sizes, num_boxes=2):
    batch = []
    for h, w in sizes:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.2, w - 2.0, h - 3.0]]))
        inst.gt_classes = torch.tensor([1, 5])
        batch.append({"image": torch.rand(3, h, w) * 255, "instances": inst, "height": h, "width": w})
    return batch


@pytest.mark.parametrize("arch", ["pvt_v2_b0", "pvt_tiny"])
def test_generalized_rcnn_trains_on_a_batch_of_two_sizes(arch):
    torch.manual_seed(0)
    model = build_model(rcnn_cfg(arch=arch))
    model.train()
    with EventStorage():
        losses = model(_batch([(96, 128), (72, 100)]))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = model.backbone.bottom_up.patch_embed1.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(_batch([(80, 90)]))
    assert out[0]["instances"].image_size == (80, 90)


def test_retinanet_trains_on_a_batch_of_two_sizes():
    torch.manual_seed(0)
    model = build_model(retinanet_cfg())
    model.train()
    with EventStorage():
        losses = model(_batch([(96, 128), (64, 70)]))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.bottom_up.block4[0].attn.q.weight.grad.abs().sum() > 0


def test_backbone_traces_with_torch_jit():
    backbone = PVTBackbone("pvt_v2_b0").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        traced = torch.jit.trace(backbone, x, strict=False, check_trace=False)
        other = torch.randn(1, 3, 96, 64)  # v2 has no size-dependent Python branches
        for a, b in ((traced(x), backbone(x)), (traced(other), backbone(other))):
            assert a.keys() == b.keys()
            for k in a:
                torch.testing.assert_close(a[k], b[k])


def test_v1_backbone_traces_at_its_input_size():
    backbone = PVTBackbone("pvt_tiny").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        traced = torch.jit.trace(backbone, x, strict=False, check_trace=False)
        a, b = traced(x), backbone(x)
    for k in b:
        torch.testing.assert_close(a[k], b[k])
