"""Speed and memory of PVT models: ``python -m pvt_d2.benchmark --config-file CFG [--task TASK ...] [--size H W]
[--batch B] [--iters N] [--warmup N] [--reference [--rounds R]] [--dtype fp32|bf16|fp16] [KEY VALUE ...]``.

Tasks (several may be given):

- ``backbone``: the PVT backbone's forward without autograd (eval mode) on (B, 3, H, W) images.
- ``train``: the PVT backbone's forward + backward (train mode, the config's drop path and activation
  checkpointing; loss = sum of the stage outputs' mean squares).
- ``train-full``: one training forward + backward of the whole model (the config's meta-architecture) on
  synthetic detectron2 inputs (a few boxes per image, masks or a label map where the model needs them).
- ``inference``: the whole model in eval mode on detectron2 inputs (``[{"image", "height", "width"}]``).
- ``data``: the training data loader alone (``pvt_d2.engine``'s seeded loader, ``DATALOADER.NUM_WORKERS``
  workers, ``--batch`` or ``SOLVER.IMS_PER_BATCH`` images per batch).

For each task: median and min seconds per iteration after ``--warmup`` untimed iterations (on the CPU also the
process's CPU seconds, which other processes on a shared machine disturb less), images/s, peak memory
growth, the model FLOPs per iteration (``pvt_d2.analyze``, 1 multiply-add = 1 FLOP; train tasks count backward
as 2x forward) and the GFLOP/s achieved, with its share of the GEMM peak measured in the same process right after
(best ``torch.mm`` of two n x n matrices, n**3 multiply-adds, in the run's compute dtype).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated after the model was built; on the
CPU, the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set after the
model was built. Each measured task runs in a fresh child process (multiprocessing "spawn"), so memory freed by
one task but kept by the C allocator never hides the next task's use; ``--no-isolate`` runs in this process (faster
to start, memory figures then only approximate). Both ours and the reference run with
``pvt_d2.cpu_allocator``'s malloc tuning, as ``train_net.py`` does (``PVT_D2_KEEP_FREED_MEMORY=0``: without; with
``--no-isolate`` only its ``keep_freed_memory()`` part).

``--reference`` also measures, in the same run and on the same weights (shared tensors, not copies), a plain eager
formulation of the backbone (``pvt_d2.reference``) and prints ours / reference ratios. ``--reference-kind`` picks
it: ``timm`` is timm's ``pvt_v2_*`` (``features_only``; standard v2 variants, timm installed), ``unfused`` is
``UnfusedPVT``, the formulation of the authors' detection code for v1 and v2 alike (explicit softmax(q kᵀ) v
attention, v1 position embeddings resized on every forward, contiguous stage outputs), and ``auto`` (the default) is
timm where it applies, else unfused. timm's attention is fused (``F.scaled_dot_product_attention``), the authors' is
not, so for v2 the two references differ in speed and memory, not in outputs. In the ``inference`` and
``train-full`` tasks the reference replaces the PVT inside the whole model. ``--rounds R`` measures ours and the
reference alternately R times (each round a fresh process with its own warm-up) and pools each side's timed
iterations: on a host whose speed drifts (a shared cloud machine: up to ~20% within an hour here) both sides then
see the same drift, where one round each can put ours in a slow phase and the reference in a fast one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .cli import help_description
from .reference import REFERENCE_KINDS, ReferenceAsBackbone, reference_backbone

__all__ = [
    "TASKS", "BenchmarkJob", "BenchmarkResult", "gemm_peak", "run_job", "run_benchmark", "format_result", "main",
]

logger = logging.getLogger(__name__)

TASKS = ("backbone", "train", "train-full", "inference", "data")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_PROGRESS_EVERY_S = 10.0
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")  # a config override's key, e.g. MODEL.WEIGHTS


@dataclass
class BenchmarkJob:
    """One measurement: a task of the model described by ``config_file`` + ``opts``, ours or the reference.

    size: (H, W) input pixels (None: the config's test size, see ``default_size``). batch: images per iteration
    (None: 1 for backbone / inference, 2 for train tasks, SOLVER.IMS_PER_BATCH for data). dtype: "fp32", "bf16" or
    "fp16" autocast, or None (train tasks: SOLVER.AMP; others fp32). threads: torch intra-op threads (None: torch's
    default). seed: the weights' and inputs' seed, the same for ours and the reference. reference_kind: which
    reference formulation ``reference`` measures (``REFERENCE_KINDS``).
    """

    config_file: str
    opts: List[str] = field(default_factory=list)
    task: str = "backbone"
    reference: bool = False
    reference_kind: str = "auto"  # see REFERENCE_KINDS
    size: Optional[Tuple[int, int]] = None
    batch: Optional[int] = None
    iters: int = 10
    warmup: int = 2
    dtype: Optional[str] = None
    threads: Optional[int] = None
    seed: int = 0
    flops: bool = True


@dataclass
class BenchmarkResult:
    """What ``run_job`` measured. Times in seconds per iteration, memory in bytes, FLOPs per iteration."""

    task: str
    variant: str  # "ours" or a description of the reference
    model: str
    device: str
    dtype: str
    batch: int
    size: Optional[Tuple[int, int]]
    times: List[float]
    peak_memory: Optional[int]
    memory_method: str
    flops: Optional[float] = None
    gemm_peak: Optional[float] = None  # multiply-adds per second
    gemm_dtype: Optional[str] = None
    gemm_peak_fp32: Optional[float] = None  # also measured when the run's dtype is not fp32
    load_average: Optional[Tuple[float, float, float]] = None
    threads: int = 0
    cpu_times: List[float] = field(default_factory=list)  # process CPU seconds per iteration (all threads)
    notes: List[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median

    @property
    def flops_per_s(self) -> Optional[float]:
        return self.flops / self.median if self.flops else None

    @property
    def peak_share(self) -> Optional[float]:
        if self.flops and self.gemm_peak:
            return self.flops / self.best / self.gemm_peak
        return None

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(median=self.median, min=self.best, images_per_s=self.images_per_s)
        return d


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: Optional[int] = None,
              reps: int = 5) -> float:
    """Multiply-adds per second of the best of ``reps`` ``torch.mm`` of two n x n matrices (n**3 each).

    n defaults to 2048 on the CPU and 8192 on CUDA (large enough to approach the library's peak).
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return n ** 3 / best


class _MemoryMeter:
    """Peak memory above a baseline taken at ``start()``: CUDA allocator peak, or the CPU's resident-set peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "none"
        self.base = 0

    @staticmethod
    def _rss() -> Optional[int]:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _hwm() -> Optional[int]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
            return
        rss = self._rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set (VmHWM) to the current one
        except OSError:
            rss = None
        if rss is None or self._hwm() is None:
            self.method = "none"
            return
        self.base = rss
        self.method = "resident-set peak (VmHWM)"

    def peak(self) -> Optional[int]:
        if self.method == "none":
            return None
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return max(0, self._hwm() - self.base)


def default_size(cfg) -> Tuple[int, int]:
    """The config's test size for a 4:3 image, padded to a multiple of 32: (INPUT.MIN_SIZE_TEST, 4/3 of it capped
    at INPUT.MAX_SIZE_TEST)."""
    h = cfg.INPUT.MIN_SIZE_TEST
    w = min(cfg.INPUT.MAX_SIZE_TEST, h * 4 // 3)
    return int(math.ceil(h / 32) * 32), int(math.ceil(w / 32) * 32)


def _default_batch(task: str, cfg) -> int:
    if task == "data":
        return int(cfg.SOLVER.IMS_PER_BATCH)
    return 2 if task.startswith("train") else 1


def _compute_dtype(job: BenchmarkJob, cfg, device: torch.device) -> Optional[torch.dtype]:
    """None for fp32, else the autocast dtype."""
    if job.dtype is None:
        if job.task.startswith("train"):
            from .engine.train_loop import autocast_settings

            return autocast_settings(cfg, device.type)[1]
        return None
    if job.dtype not in _DTYPES:
        raise ValueError(f"--dtype {job.dtype!r} is not one of {sorted(_DTYPES)}")
    dtype = _DTYPES[job.dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device; on the CPU use bf16")
    return None if dtype == torch.float32 else dtype


def _synthetic_inputs(cfg, batch: int, size: Tuple[int, int], train: bool) -> List[Dict]:
    """detectron2 inputs: random images (0..255) and, for training, a few boxes (masks) per image or a label map."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(1)
    h, w = size
    inputs = []
    for _ in range(batch):
        d: Dict[str, Any] = {"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h, "width": w}
        if train:
            if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
                classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
                d["sem_seg"] = torch.randint(0, classes, (h, w), generator=g)
            else:
                n = 4
                xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
                wh = (torch.rand(n, 2, generator=g) * 0.3 + 0.05) * torch.tensor([w, h])
                boxes = torch.cat([xy, xy + wh], dim=1)
                inst = Instances((h, w))
                inst.gt_boxes = Boxes(boxes)
                inst.gt_classes = torch.zeros(n, dtype=torch.int64)
                if cfg.MODEL.MASK_ON:
                    masks = torch.zeros(n, h, w, dtype=torch.bool)
                    for j, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                        masks[j, y0:y1, x0:x1] = True
                    inst.gt_masks = BitMasks(masks)
                d["instances"] = inst
        inputs.append(d)
    return inputs


def _swap_in_reference(model: nn.Module, drop_path_rate: float, kind: str) -> str:
    """Replace the PVT inside ``model`` by its reference formulation (same tensors); returns the description."""
    from .engine.checkpointer import _find_pvt

    found = _find_pvt(model)
    if found is None:
        raise ValueError("--reference: the model has no PVT backbone")
    prefix, pvt = found
    impl, desc = reference_backbone(pvt, drop_path_rate, kind)
    wrapper = ReferenceAsBackbone(impl, pvt._out_features)
    wrapper.train(pvt.training)
    path = prefix.rstrip(".")
    if not path:
        raise ValueError("--reference: the model is a bare PVT; use --task backbone")
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, wrapper.to(next(pvt.parameters()).device))
    return desc


def _build_backbone(cfg):
    """The config's PVT backbone with all four stages as outputs (what the reference computes)."""
    from detectron2.layers import ShapeSpec

    from .modeling.backbone import STAGE_NAMES, build_pvt_backbone

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PVT.OUT_FEATURES = list(STAGE_NAMES)
    return build_pvt_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def _build_data_loader(cfg, batch: int):
    from detectron2.data import DatasetFromList, get_detection_dataset_dicts

    from .data.stream import build_seeded_train_loader
    from .engine.trainer import build_train_mapper

    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, min_keypoints=0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    dataset = DatasetFromList(dicts, copy=False, serialize=True)
    return build_seeded_train_loader(dataset, build_train_mapper(cfg), batch, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                     rank=0, world_size=1, seed=max(cfg.SEED, 0), start_iter=0)


def run_job(job: BenchmarkJob) -> BenchmarkResult:
    """Run one measurement in this process (see the module docstring) and return what was measured."""
    if job.task not in TASKS:
        raise ValueError(f"unknown task {job.task!r}; tasks: {', '.join(TASKS)}")
    from .cpu_allocator import keep_freed_memory

    keep_freed_memory()  # what train_net.py and pvt_d2.predict run with (ours and the reference alike)
    threads = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)
    try:
        return _run_job(job)
    finally:
        torch.set_num_threads(threads)


def _run_job(job: BenchmarkJob) -> BenchmarkResult:
    from . import setup_cfg

    cfg = setup_cfg(job.config_file, list(job.opts))
    device = torch.device(cfg.MODEL.DEVICE)
    amp = _compute_dtype(job, cfg, device)
    size = tuple(job.size) if job.size else default_size(cfg)
    batch = job.batch or _default_batch(job.task, cfg)
    torch.manual_seed(job.seed)
    notes: List[str] = []
    variant = "ours"
    model_name = cfg.MODEL.PVT.ARCH
    flop_fn: Optional[Callable[[], float]] = None

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    if job.task in ("backbone", "train"):
        model = _build_backbone(cfg).to(device)
        if job.reference:
            impl, variant = reference_backbone(model, cfg.MODEL.PVT.DROP_PATH_RATE, job.reference_kind)
            del model
            model = impl.to(device)
        x = torch.randn(batch, 3, *size, device=device)
        if job.task == "backbone":
            model.eval()

            def step():
                with torch.no_grad(), autocast():
                    model(x)
        else:
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]

            def step():
                with autocast():
                    outs = model(x)
                    outs = outs.values() if isinstance(outs, dict) else outs
                    loss = sum(o.float().pow(2).mean() for o in outs)
                loss.backward()
                for p in params:
                    p.grad = None

        def flop_fn():
            from .analyze import flop_analysis

            was = model.training
            model.eval()
            with torch.no_grad():
                total = flop_analysis(model, x[:1]).total() * batch
            model.train(was)
            return total * (3 if job.task == "train" else 1)

    elif job.task in ("inference", "train-full"):
        from detectron2.modeling import build_model
        from detectron2.utils.events import EventStorage

        model_name = f"{cfg.MODEL.META_ARCHITECTURE}+{cfg.MODEL.PVT.ARCH}"
        model = build_model(cfg)
        train = job.task == "train-full"
        model.train(train)
        if job.reference:
            variant = _swap_in_reference(model, cfg.MODEL.PVT.DROP_PATH_RATE, job.reference_kind)
        inputs = _synthetic_inputs(cfg, batch, size, train)
        if train:
            params = [p for p in model.parameters() if p.requires_grad]
            notes.append("FLOPs not counted for train-full")

            def step():
                with EventStorage(0), autocast():  # detectron2's heads log training statistics to a storage
                    losses = model(inputs)
                    loss = sum(losses.values())
                loss.float().backward()
                for p in params:
                    p.grad = None
        else:
            def step():
                with torch.no_grad(), autocast():
                    model(inputs)

            def flop_fn():
                from .analyze import flop_analysis

                with torch.no_grad():
                    return flop_analysis(model, inputs[:1]).total() * batch

    else:  # data
        model_name = ",".join(cfg.DATASETS.TRAIN)
        if job.reference:
            raise ValueError("the data task has no reference")
        loader_iter = iter(_build_data_loader(cfg, batch))
        size = None
        amp = None
        notes.append(f"{cfg.DATALOADER.NUM_WORKERS} workers; memory of the main process only")

        def step():
            next(loader_iter)

    meter = _MemoryMeter(device)
    meter.start()
    label = f"{job.task} ({variant})"
    for _ in range(job.warmup):
        step()
    _sync(device)
    times: List[float] = []
    cpu_times: List[float] = []
    last_report = time.perf_counter()
    for i in range(job.iters):
        t, c = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        if time.perf_counter() - last_report > _PROGRESS_EVERY_S and i + 1 < job.iters:
            print(f"[benchmark] {label}: iteration {i + 1}/{job.iters}, {times[-1]:.3f} s", flush=True)
            last_report = time.perf_counter()
    peak = meter.peak()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None

    flops = None
    peak_gemm = peak_fp32 = None
    gemm_dtype = None
    if job.task != "data":
        gemm_dtype = amp or torch.float32
        peak_gemm = gemm_peak(device, gemm_dtype)
        if gemm_dtype != torch.float32:
            peak_fp32 = gemm_peak(device, torch.float32)
        if job.flops and flop_fn is not None and not job.reference:
            flops = flop_fn()
    return BenchmarkResult(
        task=job.task, variant=variant, model=model_name, device=str(device),
        dtype=_AMP_NAMES.get(amp, "fp32"), batch=batch, size=size, times=times, peak_memory=peak,
        memory_method=meter.method, flops=flops, gemm_peak=peak_gemm,
        gemm_dtype=None if gemm_dtype is None else _AMP_NAMES.get(gemm_dtype, "fp32"), gemm_peak_fp32=peak_fp32,
        load_average=load,
        threads=torch.get_num_threads(), cpu_times=cpu_times, notes=notes,
    )


def _child(job: BenchmarkJob, conn) -> None:
    try:
        conn.send(("ok", run_job(job)))
    except BaseException:  # report anything, including KeyboardInterrupt, to the parent
        import traceback

        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _run_isolated(job: BenchmarkJob) -> BenchmarkResult:
    """``run_job`` in a fresh (spawned, non-daemonic: the data task starts loader workers) process."""
    import multiprocessing

    from .cpu_allocator import tuned_malloc_for_new_processes

    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, sender))
    with tuned_malloc_for_new_processes():  # glibc's tunables as train_net.py runs with (ours and the reference alike)
        proc.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"the benchmark process for {job.task!r} died (exit code {proc.exitcode}); out of "
                           "memory?") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"the benchmark process for {job.task!r} failed:\n{payload}")
    return payload


def _pool_rounds(rounds: List[BenchmarkResult]) -> BenchmarkResult:
    """One result from the rounds of one measurement: every timed iteration, the largest peak memory, and the GEMM
    peak of the round with the fastest iteration (so that the share of the peak compares one state of the host)."""
    fastest = min(rounds, key=lambda r: r.best)
    memory = [r.peak_memory for r in rounds]
    return dataclasses.replace(
        fastest, times=[t for r in rounds for t in r.times], cpu_times=[t for r in rounds for t in r.cpu_times],
        peak_memory=None if None in memory else max(memory), load_average=rounds[-1].load_average,
        notes=list(dict.fromkeys(n for r in rounds for n in r.notes)) + ([f"{len(rounds)} rounds pooled"]
                                                                          if len(rounds) > 1 else []))


def run_benchmark(job: BenchmarkJob, isolate: bool = True, rounds: int = 1) -> List[BenchmarkResult]:
    """Measure ``job`` (ours), then its reference if ``job.reference``; each in a fresh process if ``isolate``.

    rounds: with a reference, measure ours and the reference alternately this many times and pool each side's
    iterations (``_pool_rounds``). The reference's FLOPs are ours (the same math), so its GFLOP/s compare directly.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    run = _run_isolated if isolate else run_job
    ours, refs = [], []
    for i in range(rounds if job.reference else 1):
        if rounds > 1 and job.reference:
            print(f"[benchmark] {job.task}: round {i + 1}/{rounds} (ours, then the reference)", flush=True)
        ours.append(run(dataclasses.replace(job, reference=False)))
        if job.reference:
            refs.append(run(job))
    results = [_pool_rounds(ours)]
    if refs:
        ref = _pool_rounds(refs)
        ref.flops = results[0].flops
        results.append(ref)
    return results


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def format_result(r: BenchmarkResult) -> str:
    """One line: times, throughput, memory, FLOP rate and its share of the GEMM peak."""
    shape = f"{r.batch}x3x{r.size[0]}x{r.size[1]}" if r.size else f"batch {r.batch}"
    unit = "batch/s" if r.task == "data" else "img/s"
    rate = r.images_per_s / r.batch if r.task == "data" else r.images_per_s
    parts = [f"{r.task} {r.variant}: {r.model} {shape} {r.dtype} {r.device} ({r.threads} threads)",
             f"median {r.median:.4f} s, min {r.best:.4f} s"
             + (f" (CPU time {statistics.median(r.cpu_times):.4f} s)" if r.cpu_times and r.device == "cpu" else ""),
             f"{r.images_per_s:.2f} img/s" + (f" ({rate:.2f} {unit})" if r.task == "data" else ""),
             f"peak memory +{_fmt_bytes(r.peak_memory)}"]
    if r.flops:
        parts.append(f"{r.flops / 1e9:.4g} GFLOP/iter, {r.flops_per_s / 1e9:.4g} GFLOP/s")
    if r.gemm_peak:
        share = f" ({100 * r.peak_share:.0f}% of it at the min time)" if r.peak_share else ""
        parts.append(f"GEMM peak {r.gemm_peak / 1e9:.1f} GFLOP/s {r.gemm_dtype}{share}")
        if r.gemm_peak_fp32:
            parts.append(f"fp32 GEMM peak {r.gemm_peak_fp32 / 1e9:.1f} GFLOP/s")
    if r.notes:
        parts.append("; ".join(r.notes))
    return "; ".join(parts)


def _ratio_line(ours: BenchmarkResult, ref: BenchmarkResult) -> str:
    mem = "n/a"
    if ours.peak_memory is not None and ref.peak_memory:
        mem = f"{ours.peak_memory / ref.peak_memory:.2f}x"
    return (f"{ours.task} ours/reference: time {ours.median / ref.median:.2f}x (median), "
            f"{ours.best / ref.best:.2f}x (min); peak memory {mem}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvt_d2.benchmark", description=help_description(__doc__))
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--task", nargs="+", default=["backbone"], metavar="TASK",
                        help=f"one or more of {', '.join(TASKS)} (default: backbone)")
    parser.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="input size (default: INPUT.MIN_SIZE_TEST x 4/3 of it, capped by MAX_SIZE_TEST, "
                             "padded to a multiple of 32)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per iteration (default: 1; train tasks 2; data SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--reference", action="store_true",
                        help="also measure a plain eager formulation on the same weights (see --reference-kind)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --reference: alternate ours and the reference this many times, each a fresh "
                             "process, and pool their iterations (robust to a host whose speed drifts)")
    parser.add_argument("--reference-kind", choices=REFERENCE_KINDS, default="auto",
                        help="the reference: timm's pvt_v2, the authors' unfused formulation, or auto (timm where "
                             "it applies, else unfused)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                        help="autocast dtype (default: train tasks SOLVER.AMP, others fp32); CPU: fp32 or bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure in this process instead of a fresh one per task (memory figures approximate)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    # "--task inference MODEL.WEIGHTS x": --task takes several values, so argparse hands it the overrides too
    n_tasks = next((i for i, t in enumerate(args.task) if t not in TASKS), len(args.task))
    if n_tasks < len(args.task):
        first = args.task[n_tasks]
        if n_tasks == 0 or not _CONFIG_KEY.match(first):
            parser.error(f"--task: {first!r} is not a task; tasks: {', '.join(TASKS)}")
        args.opts = args.task[n_tasks:] + list(args.opts)
        args.task = args.task[:n_tasks]
    misplaced = [o for o in args.opts if o.startswith("--")]
    if misplaced:
        parser.error(f"options go before the KEY VALUE overrides; found {misplaced} after them")
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--iters and --rounds must be >= 1 and --warmup >= 0")

    from detectron2.utils.logger import setup_logger

    setup_logger(name="pvt_d2", abbrev_name="pvt_d2")
    results: List[BenchmarkResult] = []
    summary = []
    for task in args.task:
        job = BenchmarkJob(config_file=args.config_file, opts=list(args.opts), task=task,
                           reference=args.reference and task != "data",
                           reference_kind=args.reference_kind, size=tuple(args.size) if args.size else None,
                           batch=args.batch, iters=args.iters, warmup=args.warmup, dtype=args.dtype,
                           threads=args.threads, flops=not args.no_flops)
        found = run_benchmark(job, isolate=not args.no_isolate, rounds=args.rounds)
        for r in found:
            print(format_result(r), flush=True)
        line = f"{task} {found[0].median:.4f} s"
        if len(found) == 2:
            print(_ratio_line(*found), flush=True)
            line += f" ({found[0].median / found[1].median:.2f}x reference"
            if found[0].peak_memory is not None and found[1].peak_memory:
                line += f", memory {found[0].peak_memory / found[1].peak_memory:.2f}x"
            line += ")"
        results.extend(found)
        summary.append(line)
    load = results[-1].load_average if results else None
    load_str = f"; load average {load[0]:.2f}" if load else ""
    print(f"summary: {args.config_file}: " + "; ".join(summary) + load_str, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
