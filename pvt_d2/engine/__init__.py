"""Training and evaluation shared by train_net.py and scripts: the Trainer, its checkpointer, optimizer recipes."""
from typing import Any, Mapping

from .checkpointer import PVTCheckpointer, atomic_torch_save
from .optimizer import build_lr_scheduler, build_optimizer
from .train_loop import PVTTrainLoop
from .trainer import Trainer, build_evaluator

__all__ = [
    "Trainer", "PVTCheckpointer", "PVTTrainLoop", "atomic_torch_save", "build_evaluator", "build_optimizer",
    "build_lr_scheduler", "summarize_results",
]

# The headline metric of each evaluator, as detectron2 names it in its results dict.
_HEADLINE = {"bbox": "AP", "segm": "AP", "sem_seg": "mIoU"}


def summarize_results(results: Mapping[str, Any]) -> str:
    """One line with the headline metric per task, e.g. "bbox AP 41.20, segm AP 45.73"."""
    parts = []
    for task, metrics in (results or {}).items():
        key = _HEADLINE.get(task)
        if isinstance(metrics, Mapping) and key in metrics:
            parts.append(f"{task} {key} {metrics[key]:.2f}")
    return ", ".join(parts) if parts else "no evaluation results"
