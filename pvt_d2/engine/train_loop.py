"""One training step: mixed precision (CUDA fp16/bf16, CPU bf16), gradient clipping, per-step RNG seeding.

Replaces detectron2's SimpleTrainer/AMPTrainer pair so that (a) AMP works on CPU with bfloat16, (b) gradients are
clipped after AMP unscaling, by value, per-parameter norm (detectron2's "norm") or whole-model norm ("full_model",
as DETR does), and (c) every step re-seeds the RNGs from (seed, iteration, rank): drop-path masks and proposal
sampling then depend only on the iteration, so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterable, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from ..data.stream import stream_seed

__all__ = ["PVTTrainLoop", "autocast_settings"]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast_settings(cfg: CfgNode, device_type: str):
    """``(enabled, dtype)`` for ``torch.autocast`` from ``SOLVER.AMP``; on CPU only bfloat16 is used."""
    if not cfg.SOLVER.AMP.ENABLED:
        return False, None
    name = cfg.SOLVER.AMP.DTYPE
    if name not in _DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE={name!r} is not one of {sorted(_DTYPES)}")
    dtype = _DTYPES[name]
    if device_type == "cpu" and dtype != torch.bfloat16:
        logger.warning("SOLVER.AMP on CPU runs in bfloat16 (float16 autocast is a GPU feature); using bfloat16")
        dtype = torch.bfloat16
    return True, dtype


class PVTTrainLoop(SimpleTrainer):
    """SimpleTrainer with AMP on any device, clipping after unscaling and deterministic per-step seeds.

    Args:
        model, data_loader, optimizer: as for detectron2's SimpleTrainer. The loader is iterated lazily, so that
            ``set_data_loader`` can replace it (e.g. positioned at the resumed iteration) before training starts.
        amp_dtype: None for fp32, else the autocast dtype.
        clip_type: None, "value", "norm" (each parameter's own norm) or "full_model" (one norm over all).
        clip_value: the threshold for value / norm clipping; norm_type: the p of the norm.
        seed: the run's seed; step ``it`` on rank ``r`` seeds torch/numpy/random from ``(seed, it, r)``.
    """

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *,
                 amp_dtype: Optional[torch.dtype] = None, clip_type: Optional[str] = None,
                 clip_value: float = 1.0, norm_type: float = 2.0, seed: int = 0):
        super(SimpleTrainer, self).__init__()  # TrainerBase: SimpleTrainer.__init__ would start the loader
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter = None
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        if clip_type not in (None, "value", "norm", "full_model"):
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip_type!r} is not one of 'value', 'norm', 'full_model'"
            )
        self.clip_type, self.clip_value, self.norm_type = clip_type, clip_value, norm_type
        self.seed = seed
        device_type = next(model.parameters()).device.type
        self.device_type = device_type
        # A grad scaler only for CUDA fp16: bf16 has fp32's exponent range and needs none.
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and device_type == "cuda")

    def set_data_loader(self, data_loader: Iterable) -> None:
        self.data_loader = data_loader
        self._data_loader_iter = None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def _clip(self) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.clip_type == "value":
            torch.nn.utils.clip_grad_value_(params, self.clip_value)
        elif self.clip_type == "norm":
            for p in params:
                torch.nn.utils.clip_grad_norm_([p], self.clip_value, self.norm_type)
        elif self.clip_type == "full_model":
            torch.nn.utils.clip_grad_norm_(params, self.clip_value, self.norm_type)

    def run_step(self) -> None:
        assert self.model.training, "[PVTTrainLoop] model was changed to eval mode!"
        if self._data_loader_iter is None:
            self._data_loader_iter = iter(self.data_loader)
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        # Drop-path masks, proposal sampling and anything else drawn in this step depend on the iteration only.
        torch.manual_seed(stream_seed(self.seed, self.iter, comm.get_rank()))

        with self._autocast():
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            losses, loss_dict = loss_dict, {"total_loss": loss_dict}
        else:
            losses = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses.float()).backward()
        self._write_metrics(loss_dict, data_time)
        if self.clip_type is not None:
            self.grad_scaler.unscale_(self.optimizer)
            self._clip()
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()  # iteration, hooks, optimizer
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["seed"] = self.seed
        return ret

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict and self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        self.seed = state_dict.get("seed", self.seed)
