"""python -m pvt_d2.benchmark: its tasks, reference ratios, rounds and options, and a run on every config."""
import glob
import os

import pytest
import torch

from pvt_d2.benchmark import BenchmarkJob, format_result, gemm_peak, main, run_benchmark
from pvt_helpers import ROOT

V1_CFG = os.path.join(ROOT, "configs/Synthetic/mask_rcnn_pvt_tiny_shapes.yaml")
V2_CFG = os.path.join(ROOT, "configs/Synthetic/retinanet_pvt_v2_b0_shapes.yaml")
TINY = dict(size=(64, 64), iters=2, warmup=1, threads=1)  # 1 thread: steadier on a shared machine


def test_gemm_peak_is_positive():
    assert gemm_peak("cpu", torch.float32, n=128, reps=2) > 0


# ---- the tasks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, ref_kind", [(V1_CFG, "unfused"), (V2_CFG, None)])
def test_backbone_and_train_tasks_with_reference(config, ref_kind):
    for task in ("backbone", "train"):
        job = BenchmarkJob(config_file=config, opts=["MODEL.DEVICE", "cpu"], task=task, reference=True, **TINY)
        ours, ref = run_benchmark(job, isolate=False)
        assert ours.variant == "ours" and ref.variant.startswith("reference")
        if ref_kind:
            assert ref_kind in ref.variant
        assert len(ours.times) == len(ref.times) == 2 and min(ours.times + ref.times) > 0
        assert ours.batch == (2 if task == "train" else 1) and ours.size == (64, 64)
        assert ours.flops > 0 and ref.flops == ours.flops  # same math, counted once
        assert ours.gemm_peak > 0 and 0 < ours.peak_share
        assert ours.memory_method != "none" and ours.peak_memory is not None
        line = format_result(ours)
        assert "median" in line and "GFLOP/s" in line and "GEMM peak" in line


def test_cli_runs_every_task_and_prints_ratios_and_summary(capsys, tmp_path):
    out_json = tmp_path / "results.json"
    assert main(["--config-file", V2_CFG, "--task", "backbone", "inference", "train-full", "data", "--size", "64",
                 "64", "--iters", "2", "--warmup", "1", "--threads", "1", "--reference", "--no-isolate",
                 "--json", str(out_json), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
                 "SOLVER.IMS_PER_BATCH", "2"]) == 0
    out = capsys.readouterr().out
    for task in ("backbone", "inference", "train-full"):
        assert f"{task} ours/reference: time" in out
    assert "data ours: shapes_train batch 2" in out
    assert "summary:" in out and "load average" in out
    import json

    results = json.loads(out_json.read_text())
    assert [(r["task"], r["variant"] == "ours") for r in results] == [
        ("backbone", True), ("backbone", False), ("inference", True), ("inference", False),
        ("train-full", True), ("train-full", False), ("data", True)]


def test_cli_reference_kind_unfused_measures_the_authors_formulation_of_v2(capsys):
    assert main(["--config-file", V2_CFG, "--task", "train", "--size", "64", "64", "--iters", "1", "--warmup", "0",
                 "--threads", "1", "--reference", "--reference-kind", "unfused", "--no-isolate", "--no-flops",
                 "MODEL.DEVICE", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "train reference (unfused pvt_v2_b0, eager: the authors' formulation)" in out
    assert "train ours/reference: time" in out


def test_overrides_right_after_the_tasks_are_overrides_not_tasks(capsys):
    assert main(["--config-file", V2_CFG, "--size", "64", "64", "--iters", "1", "--warmup", "0", "--threads", "1",
                 "--no-isolate", "--no-flops", "--task", "backbone", "MODEL.DEVICE", "cpu",
                 "MODEL.PVT.DROP_PATH_RATE", "0.0"]) == 0
    assert "summary:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config-file", V2_CFG, "--task", "backbone", "speed"])
    assert "--task: 'speed' is not a task; tasks: backbone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config-file", V2_CFG, "--task", "MODEL.DEVICE", "cpu"])
    assert "--task: 'MODEL.DEVICE' is not a task" in capsys.readouterr().err


def test_rounds_alternate_ours_and_the_reference_and_pool_their_iterations(capsys):
    job = BenchmarkJob(config_file=V2_CFG, opts=["MODEL.DEVICE", "cpu"], task="backbone", reference=True,
                       reference_kind="unfused", **TINY)
    ours, ref = run_benchmark(job, isolate=False, rounds=2)
    assert len(ours.times) == len(ref.times) == 2 * job.iters
    assert ours.variant == "ours" and "unfused" in ref.variant
    assert "2 rounds pooled" in ours.notes and "2 rounds pooled" in ref.notes
    assert ref.flops == ours.flops
    out = capsys.readouterr().out
    assert "round 1/2" in out and "round 2/2" in out
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run_benchmark(job, isolate=False, rounds=0)
    with pytest.raises(SystemExit):
        main(["--config-file", V2_CFG, "--rounds", "0"])


def test_options_after_the_overrides_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--config-file", V1_CFG, "MODEL.DEVICE", "cpu", "--iters", "1"])
    assert "options go before the KEY VALUE overrides" in capsys.readouterr().err


def test_bf16_dtype_reports_bf16_and_both_gemm_peaks():
    job = BenchmarkJob(config_file=V1_CFG, opts=["MODEL.DEVICE", "cpu"], task="backbone", dtype="bf16", **TINY)
    (r,) = run_benchmark(job, isolate=False)
    assert r.dtype == "bf16" and r.gemm_dtype == "bf16" and r.gemm_peak_fp32 > 0


def test_fp16_on_cpu_is_refused():
    job = BenchmarkJob(config_file=V1_CFG, opts=["MODEL.DEVICE", "cpu"], task="backbone", dtype="fp16", **TINY)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        run_benchmark(job, isolate=False)


def test_isolated_run_measures_in_a_fresh_process():
    job = BenchmarkJob(config_file=V2_CFG, opts=["MODEL.DEVICE", "cpu"], task="backbone", **TINY)
    threads = torch.get_num_threads()
    (r,) = run_benchmark(job, isolate=True)
    assert torch.get_num_threads() == threads
    assert r.threads == 1 and r.peak_memory is not None and len(r.times) == 2


# ---- every config --------------------------------------------------------------------------------------------
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.relpath(c, ROOT) for c in CONFIGS])
def test_benchmark_runs_on_every_config(config):
    job = BenchmarkJob(config_file=config, opts=["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], task="backbone",
                       size=(64, 64), iters=1, warmup=0, threads=1, flops=False)
    (result,) = run_benchmark(job, isolate=False)
    assert result.times and result.times[0] > 0 and result.model
