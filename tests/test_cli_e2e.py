"""End to end through the real command lines on the bundled shapes dataset, with a tiny schedule."""
import importlib
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from pvt_helpers import ROOT

CFG = "configs/Synthetic/mask_rcnn_pvt_v2_b0_shapes.yaml"
TINY = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "160", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SEED", "1",
        "DATALOADER.NUM_WORKERS", "0"]


def run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    opts = [*TINY, "OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "2"]
    # Train 4 iterations with a checkpoint every 2, no evaluation ...
    run("train_net.py", "--config-file", CFG, *opts, "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()",
        "TEST.VIS_NUM_IMAGES", "0")
    # ... then resume the same run to iteration 6, evaluating and drawing 2 validation images at the end.
    log = run("train_net.py", "--config-file", CFG, "--resume", *opts, "SOLVER.MAX_ITER", "6",
              "TEST.VIS_NUM_IMAGES", "2")
    return out, log


def test_training_writes_periodic_checkpoints_and_metrics(trained):
    out, _ = trained
    for name in ("model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth", "metrics.json"):
        assert (out / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))


def test_resume_continues_from_the_last_checkpoint(trained):
    out, log = trained
    assert "[Checkpointer] Loading from" in log and "Loading trainer from" in log
    assert "Starting training from iteration 4" in log
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == 5 if "iteration" in ckpt else ckpt["trainer"]["iteration"] == 5


def test_training_ends_with_evaluation_and_prediction_images(trained):
    out, log = trained
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log
    assert "prediction images in" in log
    if platform.libc_ver()[0] == "glibc":  # train_net.py restarted itself with glibc's per-thread cache off
        assert "glibc tunables: glibc.malloc.tcache_count=0" in log
    assert len(os.listdir(out / "predictions" / "shapes_val")) == 2


def test_eval_only_prints_ap_and_predictor_matches_it(trained, tmp_path):
    out, _ = trained
    # Keep every detection so that even a barely trained model has some to compare.
    keep_all = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.WEIGHTS", str(out / "model_final.pth")]
    log = run("train_net.py", "--config-file", CFG, "--eval-only", *TINY, *keep_all, "OUTPUT_DIR", str(tmp_path))
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log
    assert "Finished evaluation" in log

    # The predictor in a script gives the detections that --eval-only evaluated.
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    from pvt_d2 import Predictor, setup_cfg

    results = json.loads((tmp_path / "inference" / "shapes_val" / "coco_instances_results.json").read_text())
    first = DatasetCatalog.get("shapes_val")[0]
    expected = sorted((r for r in results if r["image_id"] == first["image_id"]), key=lambda r: -r["score"])
    cfg = setup_cfg(CFG, TINY + keep_all)
    inst = Predictor(cfg)(read_image(first["file_name"], format="BGR"))["instances"]
    assert len(inst) == len(expected) > 0
    order = inst.scores.argsort(descending=True)
    boxes = inst.pred_boxes.tensor[order].numpy()
    np.testing.assert_allclose(inst.scores[order].numpy(), [r["score"] for r in expected], atol=1e-4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    np.testing.assert_allclose(xywh, [r["bbox"] for r in expected], atol=1e-2)


def check_predict_cli_draws_a_val_image(config, opts, weights, out_dir):
    """``python -m pvt_d2.predict`` on the first shapes_val image writes its drawing."""
    from pvt_d2.data.shapes import ensure_shapes_generated, shapes_files

    root = os.path.join(ROOT, "datasets", "shapes")
    ensure_shapes_generated(root)
    image_dir = shapes_files(root, "val")["image_root"]
    image = sorted(os.listdir(image_dir))[0]
    log = run("-m", "pvt_d2.predict", "--config-file", config, "--input", os.path.join(image_dir, image),
              "--output", str(out_dir), *opts, "MODEL.WEIGHTS", str(weights))
    assert "Drew predictions on 1 images" in log
    assert (out_dir / (os.path.splitext(image)[0] + ".png")).is_file()


def test_predict_cli_draws_images(trained, tmp_path):
    out, _ = trained
    check_predict_cli_draws_a_val_image(CFG, TINY, out / "model_final.pth", tmp_path / "vis")


def test_bad_config_key_names_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "train_net.py", "--config-file", CFG, "MODEL.PVT.ARCHH", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "MODEL.PVT.ARCHH" in proc.stderr


@pytest.mark.parametrize("command", ["predict", "analyze", "convert", "benchmark"])
def test_help_gives_the_commands_whole_usage_line(command, capsys):
    from pvt_d2.cli import help_description

    module = importlib.import_module(f"pvt_d2.{command}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse re-wraps the text
    assert "``" not in shown
    assert "".join(help_description(module.__doc__).split()) in shown
    assert f"python -m pvt_d2.{command}" in help_description(module.__doc__)
