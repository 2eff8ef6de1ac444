"""detectron2's DetectionCheckpointer with atomic writes and PVT ImageNet weights as ``MODEL.WEIGHTS``.

- Saving writes ``<name>.pth.tmp``, fsyncs it and renames it over ``<name>.pth`` (then the same for
  ``last_checkpoint``), so an interrupted save never leaves a half-written checkpoint for ``--resume`` to read.
- Loading a file that holds a PVT backbone (the authors' release, timm's ``pvt_v2_*``, flat or wrapped) converts it
  to the model's key names (``pvt_d2.checkpoint``), checks its arch against the model's, logs how many backbone
  tensors matched, and fails if none did. Detector checkpoints load as detectron2 loads them.
- Files are read with ``torch.load(weights_only=True)``: no pickled code runs unless ``trust_pickle=True``
  (``MODEL.WEIGHTS_TRUST_PICKLE``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..checkpoint import CheckpointError, read_checkpoint_file, to_detectron2_checkpoint, unwrap_state_dict
from ..modeling.pvt import PVT

__all__ = ["PVTCheckpointer", "atomic_torch_save"]

logger = logging.getLogger(__name__)

# Keys by which an ImageNet PVT file (authors' or timm's), as opposed to a detector checkpoint, is recognised.
_IMAGENET_ANCHORS = ("patch_embed1.proj.weight", "patch_embed.proj.weight")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` that leaves either the old file or the complete new one, never a partial file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _find_pvt(model: torch.nn.Module) -> Optional[Tuple[str, PVT]]:
    for name, module in model.named_modules():
        if isinstance(module, PVT):
            return (name + "." if name else ""), module
    return None


class PVTCheckpointer(DetectionCheckpointer):
    """See the module docstring. Arguments are DetectionCheckpointer's, plus ``trust_pickle``."""

    def __init__(self, model, save_dir: str = "", *, trust_pickle: bool = False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.trust_pickle = trust_pickle

    # ---- saving ----
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)

    # ---- loading ----
    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)
        local = PathManager.get_local_path(filename)
        raw = read_checkpoint_file(local, trust_pickle=self.trust_pickle)
        if isinstance(raw, dict) and self._is_imagenet_pvt(raw):
            return self._convert_imagenet(raw, filename)
        if not isinstance(raw, dict) or "model" not in raw:
            raw = {"model": raw}
        if "__author__" not in raw:
            raw["matching_heuristics"] = raw.get("matching_heuristics", False)
        return raw

    @staticmethod
    def _is_imagenet_pvt(raw: Dict[str, Any]) -> bool:
        try:
            sd = unwrap_state_dict(raw)
        except CheckpointError:
            return False
        keys = {k[len("module."):] if k.startswith("module.") else k for k in sd}
        return any(a in keys for a in _IMAGENET_ANCHORS)

    def _convert_imagenet(self, raw: Dict[str, Any], filename: str) -> Dict[str, Any]:
        found = _find_pvt(self.model)
        if found is None:
            raise CheckpointError(f"{filename} holds ImageNet PVT weights, but the model has no PVT backbone")
        prefix, pvt = found
        converted = to_detectron2_checkpoint(raw, prefix=prefix, arch=getattr(pvt, "arch", None))
        own = self.model.state_dict()
        matched = [k for k, v in converted["model"].items() if k in own and own[k].shape == v.shape]
        total = sum(1 for k in own if k.startswith(prefix))
        if not matched:
            raise CheckpointError(f"{filename}: none of its tensors match the model's PVT backbone ({prefix}*)")
        logger.info("PVT ImageNet weights %s: %d of the backbone's %d tensors matched", filename, len(matched), total)
        return converted
