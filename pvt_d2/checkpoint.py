"""Reading PVT weights: the authors' released files, timm's ``pvt_v2_*`` state dicts, and our own.

Pure torch (no detectron2 import). The pieces:

- ``read_checkpoint_file``: a file (.pth/.pt/.bin/.safetensors) -> the object saved in it, weights-only unless
  trusted; ``load_checkpoint_file``: the same, reduced to a flat ``{name: tensor}`` dict (``unwrap_state_dict``:
  ``{"model": ...}`` / ``{"state_dict": ...}`` containers and a ``module.`` prefix removed).
- ``to_pvt_state_dict``: any of the supported key layouts -> the keys of ``pvt_d2.modeling.pvt.PVT`` (or
  ``PVTClassifier`` with ``drop_classifier=False``).
- ``detect_arch``: the ``PVT_ARCHS`` name that a state dict's tensor shapes belong to.
- ``to_detectron2_checkpoint``: a file or state dict -> a dict that detectron2's ``DetectionCheckpointer`` loads
  without its name-matching heuristics.

Key layouts understood (after an optional common prefix such as ``module.``, ``backbone.`` or
``backbone.bottom_up.``):

- authors / ours: ``patch_embed{i}.*``, ``pos_embed{i}``, ``block{i}.{j}.*``, ``norm{i}.*``, classifier extras
  ``cls_token``, ``norm.*``, ``head.*``. The authors' v2 FFN conv is ``mlp.dwconv.dwconv.*``; ours ``mlp.dwconv.*``.
- timm: ``patch_embed.*``, ``stages.{i}.downsample.*``, ``stages.{i}.blocks.{j}.*``, ``stages.{i}.norm.*``, ``head.*``
  (also ``stages_{i}`` as written by timm's ``features_only`` models).
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any, Dict, Optional, Union

import torch

__all__ = [
    "CheckpointError",
    "read_checkpoint_file",
    "load_checkpoint_file",
    "unwrap_state_dict",
    "to_pvt_state_dict",
    "detect_arch",
    "to_detectron2_checkpoint",
]

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, torch.Tensor]

_WRAPPERS = ("model", "state_dict", "model_state", "module")
_CLASSIFIER_KEYS = re.compile(r"^(head\.(weight|bias)|cls_token|norm\.(weight|bias))$")
_PVT_KEY = re.compile(
    r"^(patch_embed[1-4]\.(proj|norm)\.(weight|bias)|pos_embed[1-4]|norm[1-4]\.(weight|bias)|block[1-4]\.\d+\.\S+)$"
)
_ANCHOR = re.compile(r"^(.*?)(patch_embed1?)\.proj\.weight$")
_TIMM_RENAMES = (
    (re.compile(r"^patch_embed\."), lambda m: "patch_embed1."),
    (re.compile(r"^stages[._](\d)\.downsample\."), lambda m: f"patch_embed{int(m.group(1)) + 1}."),
    (re.compile(r"^stages[._](\d)\.blocks\.(\d+)\."), lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}."),
    (re.compile(r"^stages[._](\d)\.norm\."), lambda m: f"norm{int(m.group(1)) + 1}."),
)


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be read or converted; the message names the offending item."""


def _preview(keys, n: int = 5) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """Find the flat ``{name: tensor}`` dict inside a loaded checkpoint object.

    Descends into ``"model"``, ``"state_dict"``, ``"model_state"`` or ``"module"`` entries (first found, repeatedly),
    strips a ``module.`` prefix shared by all keys (DataParallel/DDP), and converts numpy arrays to tensors.
    ``source`` names the checkpoint in error messages.
    """
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state dict found (got {type(obj).__name__}"
                              f"{' with keys ' + _preview(obj) if isinstance(obj, Mapping) else ''})")
    out: StateDict = {}
    bad = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        elif type(v).__module__ == "numpy" and hasattr(v, "shape"):
            out[str(k)] = torch.as_tensor(v)
        else:
            bad.append(k)
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {_preview(bad)}; "
                              f"expected a flat state dict or one wrapped in {{'model': ...}} / {{'state_dict': ...}}")
    if all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def _unpickling_reason(error: Exception) -> str:
    msg = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if found:
        return f"it contains a pickled {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(\S.*)", msg)
    if found:
        return found.group(1).strip()
    return msg.strip().splitlines()[0] if msg.strip() else type(error).__name__


def read_checkpoint_file(path: PathLike, trust_pickle: bool = False) -> Any:
    """Read a weights file as saved, on the CPU (a dict of tensors, or a checkpoint dict with other entries).

    Args:
        path: a ``.safetensors`` file, or a ``torch.save`` file (.pth, .pt, .bin, ...).
        trust_pickle: allow arbitrary pickled Python objects (``torch.load(weights_only=False)``), which can run code
            from the file: only for files from a source you trust. By default only tensors, containers and plain
            values load.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors files needs the 'safetensors' package "
                                  "(pip install safetensors)") from None
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
        raise CheckpointError(
            f"{path}: weights-only loading failed ({_unpickling_reason(e)}). If you trust this file and it pickles "
            "Python objects besides tensors (e.g. training arguments), load it with trust_pickle=True "
            "(torch.load weights_only=False, which can execute code from the file); otherwise it is not a valid "
            "checkpoint."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


def load_checkpoint_file(path: PathLike, trust_pickle: bool = False) -> StateDict:
    """Read a weights file into a flat ``{name: tensor}`` dict on the CPU (``read_checkpoint_file`` then
    ``unwrap_state_dict``: ``{"model": ...}`` / ``{"state_dict": ...}`` containers and a ``module.`` prefix removed).
    """
    return unwrap_state_dict(read_checkpoint_file(path, trust_pickle=trust_pickle), source=os.fspath(path))


def _find_prefix(keys) -> str:
    found = {m.group(1) for m in map(_ANCHOR.match, map(str, keys)) if m}
    prefixes = sorted((p for p in found if p == "" or p.endswith(".")), key=len)
    if not prefixes:
        raise CheckpointError(
            "not a PVT state dict: no key ending in 'patch_embed1.proj.weight' (authors' layout) or "
            f"'patch_embed.proj.weight' (timm); keys: {_preview(sorted(keys))}"
        )
    return prefixes[0]


def to_pvt_state_dict(state_dict: Mapping, drop_classifier: bool = True) -> StateDict:
    """Convert a PVT state dict in the authors', timm's or our layout to the keys of ``PVT``.

    Keys under a common prefix (``backbone.``, ``backbone.bottom_up.``, ``module.``, ...) are selected by locating
    the first patch embedding; keys outside that prefix (detector necks and heads) are ignored.

    Args:
        state_dict: name -> tensor.
        drop_classifier: drop ``head.*``, ``cls_token`` and the v1 final ``norm.*`` (for ``PVT`` and detection
            backbones); keep them (for ``PVTClassifier``) when False.

    Returns a new dict (tensors shared, not copied). Raises ``CheckpointError`` naming unrecognised keys.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"expected a mapping of name -> tensor, got {type(state_dict).__name__}")
    prefix = _find_prefix(state_dict.keys())
    items = [(k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix)]
    is_timm = any(k.startswith(("stages.", "stages_")) for k, _ in items)
    out: StateDict = {}
    unknown = []
    for k, v in items:
        if is_timm:
            for pattern, repl in _TIMM_RENAMES:
                k, n = pattern.subn(repl, k, count=1)
                if n:
                    break
        k = k.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        if _CLASSIFIER_KEYS.match(k):
            if not drop_classifier:
                out[k] = v
        elif _PVT_KEY.match(k):
            out[k] = v
        else:
            unknown.append(prefix + k)
    if unknown:
        raise CheckpointError(f"unrecognised keys in a PVT state dict: {_preview(unknown)}")
    return out


def _stage_depth(keys, stage: int) -> int:
    idx = {int(m.group(1)) for m in (re.match(rf"^block{stage}\.(\d+)\.", k) for k in keys) if m}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"stage {stage}: block indices are not contiguous from 0: {sorted(idx)}")
    return len(idx)


def detect_arch(state_dict: Mapping) -> str:
    """The name in ``PVT_ARCHS`` whose architecture the state dict's tensor shapes match.

    Reads v1 vs v2 (patch-embedding kernel 4 vs 7), linear SRA (1x1 reduction in stage 1), blocks per stage,
    channels per stage and MLP ratios. Accepts every layout that ``to_pvt_state_dict`` does.
    Raises ``CheckpointError`` describing what was found when no variant matches.
    """
    from .modeling.pvt import PVT_ARCHS

    sd = to_pvt_state_dict(state_dict)
    missing = [k for i in range(1, 5) for k in (f"patch_embed{i}.proj.weight", f"block{i}.0.mlp.fc1.weight")
               if k not in sd]
    if missing:
        raise CheckpointError(f"incomplete PVT state dict: missing {_preview(missing)}")
    kernel = sd["patch_embed1.proj.weight"].shape[-1]
    if kernel not in (4, 7):
        raise CheckpointError(f"patch_embed1 kernel {kernel}: PVT v1 has 4, v2 has 7")
    version = 1 if kernel == 4 else 2
    dims = tuple(int(sd[f"patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5))
    depths = tuple(_stage_depth(sd, i) for i in range(1, 5))
    ratios = tuple(sd[f"block{i}.0.mlp.fc1.weight"].shape[0] / d for i, d in zip(range(1, 5), dims))
    sr = sd.get("block1.0.attn.sr.weight")
    linear = sr is not None and tuple(sr.shape[-2:]) == (1, 1)
    for name, spec in PVT_ARCHS.items():
        if (spec.version, spec.linear, spec.depths, spec.embed_dims) == (version, linear, depths, dims) and \
                tuple(float(r) for r in spec.mlp_ratios) == ratios:
            return name
    raise CheckpointError(
        f"state dict matches no PVT variant: found version={version}, depths={depths}, embed_dims={dims}, "
        f"mlp_ratios={tuple(r if r % 1 else int(r) for r in ratios)}, linear={linear}; "
        f"known variants: {', '.join(PVT_ARCHS)}"
    )


def to_detectron2_checkpoint(source: Union[PathLike, Mapping], prefix: str = "backbone.bottom_up.",
                             trust_pickle: bool = False, arch: Optional[str] = None) -> Dict[str, Any]:
    """Convert PVT weights to a checkpoint dict for detectron2's ``DetectionCheckpointer``.

    Args:
        source: a weights file (see ``load_checkpoint_file``) or a state dict in any supported layout.
        prefix: the PVT module's name inside the detectron2 model: ``"backbone.bottom_up."`` for the FPN builders,
            ``"backbone."`` for ``build_pvt_backbone`` without FPN.
        trust_pickle: see ``load_checkpoint_file``.
        arch: if given, raise ``CheckpointError`` unless the weights are of this variant.

    Returns ``{"model": {prefix + key: tensor}, "__author__": "pvt_d2", "matching_heuristics": False}`` (backbone
    keys only: classifier head, cls token and final norm dropped). Save it with ``torch.save``.
    """
    if isinstance(source, Mapping):
        sd = unwrap_state_dict(source, source="state dict")
        name = "state dict"
    else:
        sd = load_checkpoint_file(source, trust_pickle=trust_pickle)
        name = os.fspath(source)
    try:
        found = detect_arch(sd)
        sd = to_pvt_state_dict(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    if arch is not None and found != arch:
        raise CheckpointError(f"{name}: weights are {found}, expected {arch}")
    return {"model": {prefix + k: v for k, v in sd.items()}, "__author__": "pvt_d2", "matching_heuristics": False}
