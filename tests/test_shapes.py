"""The synthetic shapes dataset: determinism, scene constraints, occlusion, files, detectron2 loading, concurrency."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Dict

import numpy as np
import pytest

from pvt_d2.data import shapes

NUM_TRAIN, NUM_VAL = 16, 6  # small splits keep every test fast; images do not depend on the split size
SCENES = 60  # scenes rendered directly for distribution checks


def _checksums(root: str) -> Dict[str, str]:
    """sha256 of every file under root except the lock file, by relative path."""
    sums = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel != ".lock":
                with open(path, "rb") as f:
                    sums[rel] = hashlib.sha256(f.read()).hexdigest()
    return sums


def _decode(annotation: dict, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_util

    rle = mask_util.merge(mask_util.frPyObjects(annotation["segmentation"], h, w))
    return mask_util.decode(rle).astype(bool)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("shapes"))
    assert shapes.ensure_shapes_generated(path, NUM_TRAIN, NUM_VAL) is True
    return path


@pytest.fixture(scope="module")
def scenes():
    return [shapes.render_scene(shapes.SPLIT_SEEDS["train"], i) for i in range(SCENES)]


def _coco(root: str, split: str) -> dict:
    with open(shapes.shapes_files(root, split)["json_file"]) as f:
        return json.load(f)


# --- determinism ---------------------------------------------------------------------------------------------
def test_generation_is_byte_identical_across_runs(tmp_path, root):
    again = str(tmp_path / "again")
    shapes.ensure_shapes_generated(again, NUM_TRAIN, NUM_VAL)
    first, second = _checksums(root), _checksums(again)
    assert len(first) == 2 * (NUM_TRAIN + NUM_VAL) + 3  # images, label maps, two jsons, marker
    assert first == second


def test_each_image_is_reproducible_alone(tmp_path, root):
    a = shapes.render_scene(shapes.SPLIT_SEEDS["val"], 3)
    b = shapes.render_scene(shapes.SPLIT_SEEDS["val"], 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.sem_seg, b.sem_seg)
    assert a.category_ids == b.category_ids and np.array_equal(a.visible_masks, b.visible_masks)
    # image 3 does not depend on how many images its split has
    smaller = str(tmp_path / "smaller")
    shapes.ensure_shapes_generated(smaller, 4, 4)
    small_sums, sums = _checksums(smaller), _checksums(root)
    for rel in ("train/000003.jpg", "sem_seg/train/000003.png", "val/000003.jpg", "sem_seg/val/000003.png"):
        assert small_sums[rel] == sums[rel]


def test_splits_differ(root):
    sums = _checksums(root)
    assert sums["train/000000.jpg"] != sums["val/000000.jpg"]


# --- scene constraints -----------------------------------------------------------------------------------------
def test_every_image_has_one_to_six_instances_of_the_three_classes(root, scenes):
    counts = [len(s.category_ids) for s in scenes]
    assert min(counts) >= 1 and max(counts) <= 6
    assert max(counts) >= 4  # crowded scenes occur
    assert {c for s in scenes for c in s.category_ids} == {1, 2, 3}
    for split, num_images in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        coco = _coco(root, split)
        assert [c["name"] for c in coco["categories"]] == list(shapes.THING_CLASSES)
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=num_images + 1)[1:]
        assert len(coco["images"]) == num_images and per_image.min() >= 1 and per_image.max() <= 6
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        assert all(a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3) for a in coco["annotations"])


def test_image_sizes_vary_and_are_not_all_multiples_of_32(root, scenes):
    sizes = [s.sem_seg.shape for s in scenes] + [(i["height"], i["width"]) for i in _coco(root, "train")["images"]]
    lo, hi = shapes.IMAGE_SIDE_RANGE
    assert all(lo <= h <= hi and lo <= w <= hi for h, w in sizes)
    assert any(h % 32 or w % 32 for h, w in sizes)
    assert sum(h % 32 == 0 and w % 32 == 0 for h, w in sizes) < len(sizes) // 4
    assert len(set(sizes)) > len(sizes) // 2


def test_visible_masks_exclude_pixels_of_later_shapes(scenes):
    occluded = 0
    for s in scenes:
        n = len(s.category_ids)
        for i in range(n):
            covered_later = s.full_masks[i + 1 :].any(axis=0) if i + 1 < n else np.zeros_like(s.full_masks[i])
            assert np.array_equal(s.visible_masks[i], s.full_masks[i] & ~covered_later)
            occluded += int((s.full_masks[i] & covered_later).any())
        assert s.visible_masks.sum(axis=0).max() <= 1  # pairwise disjoint
        areas = s.visible_masks.reshape(n, -1).sum(axis=1)
        assert areas.min() >= shapes.MIN_VISIBLE_AREA  # tiny leftovers were removed from the scene
    assert occluded >= SCENES // 4  # occlusion is common, not an accident


def test_polygons_bbox_and_area_describe_the_visible_mask(root):
    coco = _coco(root, "train")
    scenes_by_id = {i["id"]: shapes.render_scene(shapes.SPLIT_SEEDS["train"], i["id"] - 1) for i in coco["images"]}
    seen: Dict[int, int] = {}
    for a in coco["annotations"]:
        scene = scenes_by_id[a["image_id"]]
        k = seen[a["image_id"]] = seen.get(a["image_id"], -1) + 1
        visible = scene.visible_masks[k]
        h, w = visible.shape
        assert a["category_id"] == scene.category_ids[k]
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
        assert np.array_equal(_decode(a, h, w), visible)  # exact: occluded pixels are not in the polygons
        ys, xs = np.nonzero(visible)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["area"] == len(xs)
    assert all(seen[i] + 1 == len(s.category_ids) for i, s in scenes_by_id.items())


def test_sem_seg_labels_agree_with_instance_masks(root):
    import cv2

    for split in ("train", "val"):
        coco = _coco(root, split)
        files = shapes.shapes_files(root, split)
        for image in coco["images"]:
            h, w = image["height"], image["width"]
            expected = np.zeros((h, w), dtype=np.uint8)
            for a in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
                expected[_decode(a, h, w)] = a["category_id"]
            stem = os.path.splitext(image["file_name"])[0]
            label = cv2.imread(os.path.join(files["sem_seg_root"], stem + ".png"), cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.shape == (h, w)
            assert np.array_equal(label, expected)


# --- generation on first use -----------------------------------------------------------------------------------
def test_complete_dataset_is_reused_and_changed_parameters_regenerate(tmp_path):
    path = str(tmp_path / "d")
    assert shapes.ensure_shapes_generated(path, 2, 1) is True
    json_file = shapes.shapes_files(path, "train")["json_file"]
    mtime = os.stat(json_file).st_mtime_ns
    assert shapes.ensure_shapes_generated(path, 2, 1) is False
    assert os.stat(json_file).st_mtime_ns == mtime
    assert shapes.ensure_shapes_generated(path, 3, 1) is True  # other parameters: regenerated, not mixed
    assert len(_coco(path, "train")["images"]) == 3 and len(os.listdir(os.path.join(path, "train"))) == 3
    os.remove(os.path.join(path, ".complete"))  # an interrupted generation leaves no marker
    assert shapes.ensure_shapes_generated(path, 3, 1) is True
    assert not [n for n in os.listdir(path) if n.startswith(".tmp-")]


def test_invalid_counts_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="num_train.*-1"):
        shapes.ensure_shapes_generated("/nonexistent", -1, 1)
    with pytest.raises(ValueError, match="'test'"):
        shapes.shapes_files("/x", "test")


_CHILD = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("shapes_child", sys.argv[1])
mod = sys.modules["shapes_child"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
print("ready", flush=True)
sys.stdin.readline()  # start together
print(json.dumps({"generated": mod.ensure_shapes_generated(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))}))
"""


def test_concurrent_generation_from_two_processes_yields_one_dataset(tmp_path, root):
    # The children load shapes.py alone (it needs only numpy and OpenCV to generate), which keeps them light.
    target = str(tmp_path / "shared")
    args = [sys.executable, "-c", _CHILD, shapes.__file__, target, str(NUM_TRAIN), str(NUM_VAL)]
    children = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for child in children:
        if child.stdout.readline().strip() != "ready":
            child.kill()
            pytest.fail(f"child did not start: {child.communicate()[1]}")
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1])["generated"])
    assert sorted(results) == [False, True]  # one generated, the other waited and reused it
    assert _checksums(target) == _checksums(root)
    assert not [n for n in os.listdir(target) if n.startswith(".tmp-")]


# --- detectron2 ------------------------------------------------------------------------------------------------
@pytest.fixture()
def registered(tmp_path):
    path = str(tmp_path / "registered")
    names = shapes.register_shapes_datasets(path, num_train=3, num_val=2, prefix="test_shapes")
    yield path, names
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_registering_generates_nothing_and_loading_generates(registered):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    path, names = registered
    assert names == ["test_shapes_train", "test_shapes_sem_seg_train", "test_shapes_val", "test_shapes_sem_seg_val"]
    assert not os.path.exists(path)
    meta = MetadataCatalog.get("test_shapes_val")
    assert meta.json_file == shapes.shapes_files(path, "val")["json_file"] and meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get("test_shapes_val")
    assert os.path.isfile(meta.json_file) and len(dicts) == 2
    sem_meta = MetadataCatalog.get("test_shapes_sem_seg_val")
    assert sem_meta.stuff_classes == ["background", "ellipse", "rectangle", "triangle"]
    assert sem_meta.ignore_label == 255 and sem_meta.evaluator_type == "sem_seg"


def test_datasetcatalog_gives_valid_instance_dicts(registered):
    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as utils

    dicts = DatasetCatalog.get("test_shapes_train")
    assert len(dicts) == 3
    for d in dicts:
        image = utils.read_image(d["file_name"], format="BGR")
        utils.check_image_size(d, image)
        assert 1 <= len(d["annotations"]) <= 6
        instances = utils.annotations_to_instances(d["annotations"], image.shape[:2], mask_format="polygon")
        assert set(instances.gt_classes.tolist()) <= {0, 1, 2}  # contiguous ids
        assert (instances.gt_masks.area() > 0).all()
        assert instances.gt_boxes.tensor[:, 2:].max() <= max(image.shape[:2])


def test_datasetcatalog_pairs_sem_seg_labels_with_their_images(registered):
    from detectron2.data import DatasetCatalog

    dicts = DatasetCatalog.get("test_shapes_sem_seg_train")
    assert len(dicts) == 3
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        assert os.path.basename(d["sem_seg_file_name"]) == stem + ".png" and os.path.isfile(d["sem_seg_file_name"])


def test_evaluator_built_first_after_ensure_scores_ground_truth_perfectly(registered):
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Instances

    assert shapes.ensure_shapes_generated_for("test_shapes_val") is True  # what --eval-only needs first
    assert shapes.ensure_shapes_generated_for("coco_2017_val") is False
    evaluator = COCOEvaluator("test_shapes_val", output_dir=None, use_fast_impl=False)
    evaluator.reset()
    for d in DatasetCatalog.get("test_shapes_val"):
        gt = utils.annotations_to_instances(d["annotations"], (d["height"], d["width"]), mask_format="bitmask")
        pred = Instances((d["height"], d["width"]))
        pred.pred_boxes, pred.pred_classes = gt.gt_boxes, gt.gt_classes
        pred.scores, pred.pred_masks = torch.ones(len(gt)), gt.gt_masks.tensor
        evaluator.process([d], [{"instances": pred}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0) and results["bbox"]["AP"] == pytest.approx(100.0)


def test_command_line_generates_then_reuses(tmp_path, capsys):
    path = str(tmp_path / "cli")
    assert shapes.main(["--root", path, "--num-train", "2", "--num-val", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith(f"shapes dataset at {path}: train 2 images") and "generated in" in first
    shapes.main(["--root", path, "--num-train", "2", "--num-val", "1"])
    assert "reused" in capsys.readouterr().out
