"""DETR through the real command lines, like the other detectors: train with checkpoints, an interrupted run resumed
with --resume ends bitwise equal to an uninterrupted one, --eval-only prints box AP, the predict CLI draws."""
import os
import shutil

import pytest
import torch

from test_cli_e2e import check_predict_cli_draws_a_val_image, run

CFG = "configs/Synthetic/detr_pvt_v2_b0_shapes.yaml"
# A small DETR on small images: the backbone and everything else stay the config's.
TINY = ["MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.NHEADS", "4", "MODEL.DETR.DIM_FEEDFORWARD", "64",
        "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "2", "MODEL.DETR.NUM_OBJECT_QUERIES", "10",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SEED", "3",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def detr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("detr_run")
    run("train_net.py", "--config-file", CFG, *TINY, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATASETS.TEST", "()", "TEST.VIS_NUM_IMAGES", "0", "OUTPUT_DIR", str(out))
    return out


def test_detr_resume_continues_exactly(detr_run, tmp_path):
    # The "interrupted" run: an output folder holding only the checkpoint written after iteration 2.
    shutil.copy(detr_run / "model_0000001.pth", tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    log = run("train_net.py", "--config-file", CFG, "--resume", *TINY, "SOLVER.MAX_ITER", "4",
              "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()", "TEST.VIS_NUM_IMAGES", "0",
              "OUTPUT_DIR", str(tmp_path))
    assert "Starting training from iteration 2" in log
    resumed = torch.load(tmp_path / "model_final.pth", weights_only=True)
    whole = torch.load(detr_run / "model_final.pth", weights_only=True)
    assert resumed["model"].keys() == whole["model"].keys()
    for k, v in whole["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    # ... and so is the rest of the state: optimizer moments, scheduler, iteration, seed.
    rest_resumed, spec_resumed = torch.utils._pytree.tree_flatten({k: v for k, v in resumed.items() if k != "model"})
    rest_whole, spec_whole = torch.utils._pytree.tree_flatten({k: v for k, v in whole.items() if k != "model"})
    assert spec_resumed == spec_whole
    for a, b in zip(rest_resumed, rest_whole):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_detr_eval_only_prints_box_ap(detr_run, tmp_path):
    log = run("train_net.py", "--config-file", CFG, "--eval-only", *TINY, "MODEL.WEIGHTS",
              str(detr_run / "model_final.pth"), "OUTPUT_DIR", str(tmp_path))
    assert "Evaluation results for bbox" in log and "copypaste: Task: bbox" in log
    assert os.path.isfile(tmp_path / "inference" / "shapes_val" / "coco_instances_results.json")


def test_detr_predict_cli_draws_detections(detr_run, tmp_path):
    check_predict_cli_draws_a_val_image(CFG, TINY, detr_run / "model_final.pth", tmp_path / "vis")
