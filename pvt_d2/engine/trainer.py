"""The Trainer every entry point shares: detectron2's DefaultTrainer with the authors' recipes and exact resume.

Differences from DefaultTrainer (v0.6), each for a reason:
- optimizer and LR schedule from ``pvt_d2.engine.optimizer`` (AdamW recipes, per-parameter decay, poly schedule);
- the step is ``PVTTrainLoop`` (AMP on CPU too, clipping after unscaling, per-step seeds);
- the train loader is a seeded stream positioned at the resumed iteration (``pvt_d2.data.stream``);
- checkpoints hold the train loop's state (optimizer, grad scaler, seed): v0.6's DefaultTrainer.state_dict saves
  only the iteration and hook states, so a resumed run restarted AdamW's moments from zero;
- ``PVTCheckpointer`` writes atomically and reads the authors' and timm's ImageNet files as ``MODEL.WEIGHTS``;
- the evaluator follows the dataset's ``evaluator_type`` ("coco", "sem_seg").
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, MetadataCatalog, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.shapes import ensure_shapes_generated_for
from ..data.stream import build_seeded_train_loader
from .checkpointer import PVTCheckpointer
from .optimizer import build_lr_scheduler, build_optimizer
from .train_loop import PVTTrainLoop, autocast_settings

__all__ = ["Trainer", "build_evaluator", "build_train_mapper"]

logger = logging.getLogger(__name__)


def build_train_mapper(cfg: CfgNode):
    """The training mapper for ``cfg``: detectron2's DatasetMapper unless the model family needs its own."""
    from ..data.mappers import build_mapper  # late: registers the optional mappers

    return build_mapper(cfg, is_train=True)


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
    """The evaluator named by the dataset's ``evaluator_type`` metadata ("coco" or "sem_seg")."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    ensure_shapes_generated_for(dataset_name)  # COCOEvaluator reads the json when it is built
    meta = MetadataCatalog.get(dataset_name)
    kind = getattr(meta, "evaluator_type", None)
    if kind == "coco":
        tasks = ["bbox"] + (["segm"] if cfg.MODEL.MASK_ON else [])
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder)
    if kind == "sem_seg":
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type={kind!r}; pvt_d2 evaluates 'coco' and 'sem_seg' datasets "
        "(set MetadataCatalog.get(name).evaluator_type)"
    )


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer for PVT models; see the module docstring for what differs."""

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # Every process must agree on the seed: it decides the data order and each step's random draws.
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self._train_dataset = None
        data_loader = self._seeded_loader(seed, start_iter=0)
        model = create_ddp_model(model, broadcast_buffers=False)
        device_type = next(model.parameters()).device.type
        _, amp_dtype = autocast_settings(cfg, device_type)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        self._trainer = PVTTrainLoop(
            model, data_loader, optimizer, amp_dtype=amp_dtype,
            clip_type=clip.CLIP_TYPE if clip.ENABLED else None, clip_value=clip.CLIP_VALUE,
            norm_type=clip.NORM_TYPE, seed=seed,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = PVTCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    def _seeded_loader(self, seed: int, start_iter: int):
        if self._train_dataset is None:
            cfg = self.cfg
            dicts = get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=0,
                proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
            )
            self._train_dataset = DatasetFromList(dicts, copy=False, serialize=True)
            self._train_mapper = build_train_mapper(cfg)
        return build_seeded_train_loader(
            self._train_dataset, self._train_mapper, self.cfg.SOLVER.IMS_PER_BATCH,
            num_workers=self.cfg.DATALOADER.NUM_WORKERS, rank=comm.get_rank(),
            world_size=comm.get_world_size(), seed=seed, start_iter=start_iter,
        )

    def resume_or_load(self, resume: bool = True) -> None:
        """Load ``MODEL.WEIGHTS`` (fresh run) or the last checkpoint with its full training state (resume)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        # Position the data stream at the first iteration to run, with the (possibly restored) seed.
        self._trainer.set_data_loader(self._seeded_loader(self._trainer.seed, self.start_iter))

    def train(self):
        """Train to ``SOLVER.MAX_ITER``; returns the last evaluation's results (v0.6 returns None unless
        ``TEST.EXPECTED_RESULTS`` is set)."""
        results = super().train()
        return results if results is not None else getattr(self, "_last_eval_results", None)

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" not in state_dict:
            raise KeyError(
                "this checkpoint has no '_trainer' state (optimizer, grad scaler, seed): it was not written by "
                "pvt_d2's Trainer, so it cannot be resumed exactly; train from it with MODEL.WEIGHTS instead"
            )
        self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        from detectron2.data import build_detection_test_loader

        from ..data.mappers import build_mapper

        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

