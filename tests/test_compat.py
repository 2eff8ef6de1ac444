"""Each detectron2 v0.6 compatibility fix in pvt_d2.compat cures its symptom (each test fails without its fix)."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pvt_d2  # noqa: F401  (applies the fixes)
from pvt_d2 import compat
from pvt_helpers import ROOT

D2_MODULES = [
    "config", "data", "engine", "evaluation", "modeling", "checkpoint",
    "utils.visualizer", "model_zoo", "export", "utils.analysis",
]


@pytest.mark.parametrize("name", D2_MODULES)
def test_detectron2_module_imports_after_pvt_d2(name):
    importlib.import_module(f"detectron2.{name}")


def test_pillow_linear_alias_is_bilinear():
    from PIL import Image
    from detectron2.data.transforms import ExtentTransform

    assert Image.LINEAR == Image.BILINEAR
    t = ExtentTransform((0, 0, 8, 8), (4, 4))
    assert t.apply_image(np.zeros((8, 8, 3), np.uint8)).shape == (4, 4, 3)


def test_compiled_op_standin_raises_naming_the_op():
    from detectron2 import _C

    if compat.has_compiled_ops():
        pytest.skip("real detectron2 extension installed")
    with pytest.raises(compat.CompiledOpUnavailable, match="deform_conv_forward"):
        _C.deform_conv_forward()
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5, 4, 4, 0]])
    with pytest.raises(compat.CompiledOpUnavailable, match="box_iou_rotated.*build detectron2 from source"):
        pairwise_iou_rotated(boxes, boxes)


def test_collect_env_reports_standin_instead_of_crashing():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_model_zoo_finds_its_configs_without_pkg_resources():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)


def test_export_imports_and_caffe2_use_raises_clearly():
    from detectron2.export import TracingAdapter  # noqa: F401
    from detectron2.utils.analysis import FlopCountAnalysis  # noqa: F401

    if importlib.util.find_spec("caffe2").loader.__class__.__name__ != "_Caffe2Finder":
        pytest.skip("a real caffe2 is installed")
    from caffe2.python import core

    with pytest.raises(RuntimeError, match="caffe2"):
        core.Net("x")


def test_sem_seg_evaluator_runs_with_new_numpy(tmp_path):
    from PIL import Image
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "a.png")
    name = "_pvt_d2_test_semseg"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255)
    ev = SemSegEvaluator(name, distributed=False, output_dir=None)
    ev.input_file_to_gt_file = {"img.jpg": str(tmp_path / "a.png")}
    ev.reset()
    logits = torch.zeros(2, 2, 4)
    logits[1, :, 2:] = 1
    ev.process([{"file_name": "img.jpg"}], [{"sem_seg": logits}])
    assert ev.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_polygon_masks_rasterize_with_new_numpy():
    from detectron2.structures.masks import polygons_to_bitmask

    m = polygons_to_bitmask([np.array([0, 0, 4, 0, 4, 4, 0, 4], float)], 6, 6)
    assert m.dtype == bool and m.sum() > 0


def test_class_histogram_prints_with_new_numpy():
    from detectron2.data.build import print_instances_class_histogram

    print_instances_class_histogram([{"annotations": [{"category_id": 0}]}], ["a"])


def test_coco_evaluator_defaults_to_official_api_without_compiled_ops(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    gt = {
        "images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    name = "_pvt_d2_test_coco"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(json_file=str(tmp_path / "gt.json"), thing_classes=["a"],
                                       thing_dataset_id_to_contiguous_id={1: 0})
    ev = COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=None)
    assert ev._use_fast_impl == compat.has_compiled_ops()
    from detectron2.structures import Boxes, Instances

    inst = Instances((10, 10), pred_boxes=Boxes(torch.tensor([[1.0, 1, 5, 5]])),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    ev.reset()
    ev.process([{"image_id": 1}], [{"instances": inst}])
    assert ev.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def _ddp_worker(out_dir):
    import torch.distributed as dist
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    model = create_ddp_model(torch.nn.Linear(2, 1), broadcast_buffers=False)
    loss = model(torch.full((1, 2), float(comm.get_rank() + 1))).sum()
    loss.backward()
    t = torch.tensor([float(comm.get_rank())])
    dist.all_reduce(t)
    torch.save({"sum": t, "grad": model.module.weight.grad}, os.path.join(out_dir, f"{comm.get_rank()}.pt"))


def test_two_process_launch_and_ddp_on_cpu(tmp_path):
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("this test covers the CPU path")
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["sum"].item() == r1["sum"].item() == 1.0
    torch.testing.assert_close(r0["grad"], r1["grad"])  # DDP averaged the gradients
    torch.testing.assert_close(r0["grad"], torch.tensor([[1.5, 1.5]]))


def test_checkpoint_with_numpy_state_loads_under_weights_only(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    model = torch.nn.Linear(2, 2)
    ckpt = DetectionCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("m", extra=np.arange(3), scalar=np.float32(1.5))
    data = torch.load(tmp_path / "m.pth", weights_only=True)
    assert data["scalar"] == np.float32(1.5)
    assert DetectionCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "m.pth"))["scalar"] == 1.5


def test_applied_lists_only_needed_fixes():
    names = compat.applied()
    assert len(names) == len(set(names))
    compat.apply()  # idempotent
    assert compat.applied() == names


def test_import_and_a_detector_step_print_no_third_party_deprecation_warnings():
    # fvcore and detectron2 script two functions at import, and detectron2's anchor generator calls torch.meshgrid
    # without indexing: torch 2.14 warns about each, on every command
    code = (
        "import warnings, torch\n"
        "import pvt_d2, pvt_d2.benchmark\n"
        "from pvt_d2 import setup_cfg\n"
        "from detectron2.modeling import build_model\n"
        "cfg = setup_cfg('configs/Synthetic/mask_rcnn_pvt_v2_b0_shapes.yaml', ['MODEL.WEIGHTS', ''])\n"
        "model = build_model(cfg).eval()\n"
        "with torch.no_grad():\n"
        "    model([{'image': torch.zeros(3, 64, 64), 'height': 64, 'width': 64}])\n"
        "warnings.warn('still shown')\n"
    )
    result = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch.jit.script" not in result.stderr
    assert "still shown" in result.stderr
    assert "torch.meshgrid" not in result.stderr
