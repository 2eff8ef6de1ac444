"""detectron2 v0.6 on today's stack: one documented fix per symptom, applied once on ``import pvt_d2``.

Every fix checks that its symptom exists before acting, so each is a no-op on a detectron2 that does not need it
(for example one built from source with its compiled ops, or a newer release). Nothing installed is edited: fixes
either provide a missing module, add a missing alias, or wrap one detectron2 function.

``applied()`` lists the fixes that were needed in this process (logged by ``train_net.py``).

Import order matters for two fixes (Pillow and ``detectron2._C``): they must be in place before detectron2's own
modules are imported, which is why ``pvt_d2/__init__.py`` imports this module first.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import sys
import types
import warnings
from typing import List

__all__ = ["apply", "applied", "has_compiled_ops", "CompiledOpUnavailable"]

_APPLIED: List[str] = []
_DONE = False

logger = logging.getLogger(__name__)


class CompiledOpUnavailable(RuntimeError):
    """Raised when a detectron2 C++/CUDA op is called but detectron2 was installed without its extension."""


# ----------------------------------------------------------------------------------------------------------------
# detectron2._C
# Symptom: ``ImportError: cannot import name '_C' from 'detectron2'`` at ``import detectron2.modeling`` (layers/
# deform_conv.py, roi_align_rotated.py, rotated_boxes.py and evaluation/fast_eval_api.py import it at module level).
# Fix: an import-time stand-in; any compiled op called through it raises CompiledOpUnavailable naming the op.
# PVT models use none of them (ROIAlign and NMS come from torchvision).
# ----------------------------------------------------------------------------------------------------------------
_STANDIN_FLAG = "PVT_D2_STANDIN"


def _make_c_standin() -> types.ModuleType:
    mod = types.ModuleType("detectron2._C")
    mod.__doc__ = "pvt_d2 stand-in for detectron2's compiled extension (not built)."
    setattr(mod, _STANDIN_FLAG, True)
    # Informational queries made by detectron2.utils.collect_env: answer them instead of failing.
    mod.get_compiler_version = lambda: "not built (pvt_d2 stand-in for detectron2._C)"
    mod.get_cuda_version = lambda: "not built (pvt_d2 stand-in for detectron2._C)"
    mod.has_cuda = lambda: False

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise CompiledOpUnavailable(
                f"detectron2 compiled op '_C.{name}' is not available: this detectron2 was installed without its "
                "C++/CUDA extension (scripts/install_detectron2.py installs Python files only). pvt_d2's models do "
                "not need it; to use this op, build detectron2 from source with its extension "
                "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) and reinstall pvt_d2."
            )

        unavailable.__name__ = name
        return unavailable

    mod.__getattr__ = __getattr__
    return mod


def _fix_compiled_ops() -> None:
    import detectron2

    if importlib.util.find_spec("detectron2._C") is not None:
        return  # the real extension exists
    standin = _make_c_standin()
    sys.modules["detectron2._C"] = standin
    detectron2._C = standin
    _APPLIED.append("detectron2._C stand-in (compiled ops unavailable)")


def has_compiled_ops() -> bool:
    """True when detectron2's real compiled extension is installed."""
    try:
        c = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return not getattr(c, _STANDIN_FLAG, False)


# ----------------------------------------------------------------------------------------------------------------
# Pillow >= 10
# Symptom: ``AttributeError: module 'PIL.Image' has no attribute 'LINEAR'`` at ``import detectron2.data``
# (data/transforms/transform.py uses it as a default argument). Pillow 10 removed the alias of BILINEAR.
# ----------------------------------------------------------------------------------------------------------------
def _fix_pillow() -> None:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return
    Image.LINEAR = Image.BILINEAR  # the value the alias always had
    _APPLIED.append("PIL.Image.LINEAR alias (Pillow >= 10)")


# ----------------------------------------------------------------------------------------------------------------
# setuptools >= 81
# Symptom: ``ModuleNotFoundError: No module named 'pkg_resources'`` at ``import detectron2.model_zoo``, which calls
# only ``pkg_resources.resource_filename(package, path)``. Fix: a minimal module with that one function, installed
# only when no pkg_resources exists.
# ----------------------------------------------------------------------------------------------------------------
def _resource_filename(package: str, resource: str) -> str:
    import importlib.resources

    return str(importlib.resources.files(package).joinpath(resource))


def _fix_pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    mod = types.ModuleType("pkg_resources")
    mod.__doc__ = "pvt_d2 stand-in: resource_filename only (setuptools >= 81 no longer ships pkg_resources)."
    mod.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = mod
    _APPLIED.append("pkg_resources.resource_filename stand-in (setuptools >= 81)")


# ----------------------------------------------------------------------------------------------------------------
# caffe2
# Symptom: ``ModuleNotFoundError: No module named 'caffe2'`` at ``import detectron2.export`` (and so at
# ``import detectron2.utils.analysis``, which imports export.TracingAdapter). PyTorch 2 no longer ships caffe2.
# Fix: importable stand-in ``caffe2.*`` modules whose contents raise a clear error when used. TracingAdapter, the
# flop counters and TorchScript/ONNX export do not touch caffe2 and keep working.
# ----------------------------------------------------------------------------------------------------------------
class _Caffe2Unavailable:
    """A placeholder for any caffe2 object: usable as a name at import time, an error when used."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Caffe2Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"'{self._name}' needs caffe2, which PyTorch 2 no longer ships; detectron2's caffe2 export is "
            "unavailable. Use detectron2.export.TracingAdapter with torch.jit.trace or torch.onnx.export instead."
        )


class _Caffe2Finder:
    """Meta-path finder that serves stand-in modules for ``caffe2`` and every ``caffe2.*`` submodule."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "caffe2" or fullname.startswith("caffe2."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = lambda attr, _n=spec.name: (
            _Caffe2Unavailable(f"{_n}.{attr}") if not attr.startswith("__") else (_ for _ in ()).throw(AttributeError(attr))
        )
        return mod

    def exec_module(self, module):
        pass


def _fix_caffe2() -> None:
    if importlib.util.find_spec("caffe2") is not None:
        return
    sys.meta_path.append(_Caffe2Finder())
    _APPLIED.append("caffe2 stand-in modules (PyTorch 2 has no caffe2)")


# ----------------------------------------------------------------------------------------------------------------
# numpy >= 1.24 aliases
# Symptom: ``AttributeError: module 'numpy' has no attribute 'int'`` (also 'float', 'bool', 'str') in
# SemSegEvaluator.process/evaluate, print_instances_class_histogram (every training run), polygon-to-bitmask
# conversion in structures/masks.py, the Visualizer and the Pascal VOC code. Fix: those detectron2 modules (only
# those) see a view of numpy that adds the removed aliases; numpy itself is not changed.
# ----------------------------------------------------------------------------------------------------------------
_NUMPY_ALIASES = {"int": int, "float": float, "bool": bool, "str": str, "object": object}
_NUMPY_ALIAS_USERS = (
    "detectron2.data.build",
    "detectron2.data.datasets.pascal_voc",
    "detectron2.evaluation.sem_seg_evaluation",
    "detectron2.evaluation.pascal_voc_evaluation",
    "detectron2.structures.masks",
    "detectron2.utils.visualizer",
    "detectron2.utils.video_visualizer",
)


class _NumpyWithAliases(types.ModuleType):
    def __init__(self, np_module):
        super().__init__(np_module.__name__, np_module.__doc__)
        self.__dict__["_np"] = np_module

    def __getattr__(self, name):
        if name in _NUMPY_ALIASES and not hasattr(self._np, name):
            return _NUMPY_ALIASES[name]
        return getattr(self._np, name)


def _fix_numpy_aliases() -> None:
    import numpy as np

    if all(hasattr(np, a) for a in ("int", "float", "bool")):
        return
    view = _NumpyWithAliases(np)
    for name in _NUMPY_ALIAS_USERS:
        mod = importlib.import_module(name)
        if getattr(mod, "np", None) is np:
            mod.np = view
    _APPLIED.append("numpy int/float/bool aliases for detectron2 modules (numpy >= 1.24)")


# ----------------------------------------------------------------------------------------------------------------
# Multi-process launch and DDP on CPU
# Symptom: ``launch(..., num_gpus_per_machine=2)`` on a machine without CUDA fails with "cuda is not available"
# (v0.6's worker hard-codes NCCL and torch.cuda.set_device); and ``create_ddp_model`` passes
# ``device_ids=[local_rank]``, which DistributedDataParallel rejects for CPU modules.
# Fix: a worker that uses gloo and skips device selection when CUDA is absent (NCCL path unchanged), and DDP
# without device_ids for CPU modules.
# ----------------------------------------------------------------------------------------------------------------
def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                        timeout=None):
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    import pvt_d2  # noqa: F401  (a spawned process re-applies the fixes before main_func runs)

    use_cuda = torch.cuda.is_available()
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    kwargs = {} if timeout is None else {"timeout": timeout}
    try:
        dist.init_process_group(
            backend="NCCL" if use_cuda else "GLOO",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            **kwargs,
        )
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        pg = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    if use_cuda:
        if num_gpus_per_machine > torch.cuda.device_count():
            raise RuntimeError(
                f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)


def _fix_cpu_distributed() -> None:
    import detectron2.engine  # noqa: F401
    from detectron2.engine import defaults

    launch_mod = sys.modules["detectron2.engine.launch"]  # the name `launch` in the package is the function

    changed = False
    if "GLOO" not in inspect.getsource(launch_mod._distributed_worker).upper():
        launch_mod._distributed_worker = _distributed_worker
        changed = True

    original = defaults.create_ddp_model
    if not getattr(original, "_pvt_d2_cpu", False):

        @functools.wraps(original)
        def create_ddp_model(model, *, fp16_compression=False, **kwargs):
            on_cpu = all(p.device.type == "cpu" for p in model.parameters())
            if on_cpu and "device_ids" not in kwargs:
                kwargs["device_ids"] = None
            return original(model, fp16_compression=fp16_compression, **kwargs)

        create_ddp_model._pvt_d2_cpu = True
        defaults.create_ddp_model = create_ddp_model
        detectron2.engine.create_ddp_model = create_ddp_model
        changed = True
    if changed:
        _APPLIED.append("gloo launch and CPU DistributedDataParallel")


# ----------------------------------------------------------------------------------------------------------------
# COCOEvaluator fast path
# Symptom: COCOEvaluator(use_fast_impl=True), its default, calls detectron2._C.COCOevalMaskApi, which does not
# exist without the extension. Fix: when the real compiled ops are missing, the default becomes the official
# pycocotools implementation (same AP, slower); an explicit use_fast_impl=True is honoured and fails clearly.
# ----------------------------------------------------------------------------------------------------------------
def _fix_coco_fast_path() -> None:
    if has_compiled_ops():
        return
    from detectron2.evaluation import coco_evaluation

    cls = coco_evaluation.COCOEvaluator
    original = cls.__init__
    if getattr(original, "_pvt_d2_official", False):
        return
    default = inspect.signature(original).parameters["use_fast_impl"].default

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = inspect.signature(original).bind_partial(self, *args, **kwargs)
        if "use_fast_impl" not in bound.arguments and default is True:
            kwargs["use_fast_impl"] = False
        original(self, *args, **kwargs)

    __init__._pvt_d2_official = True
    cls.__init__ = __init__
    _APPLIED.append("COCOEvaluator uses official pycocotools (no compiled ops)")


# ----------------------------------------------------------------------------------------------------------------
# torch >= 2.6 ``weights_only`` default
# Symptom: ``UnpicklingError: Weights only load failed`` when fvcore's Checkpointer reads a detectron2 checkpoint
# that holds plain-Python objects other than tensors and containers (detectron2 stores numpy arrays/scalars from
# its .pkl model-zoo conversions and hook states). Fix: allow-list exactly those numpy types for weights_only
# loading; arbitrary pickled code is still refused.
# ----------------------------------------------------------------------------------------------------------------
def _fix_weights_only() -> None:
    import numpy as np
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:
        return  # torch < 2.4: no weights_only default to satisfy
    try:  # numpy >= 2 pickles these under numpy._core, numpy 1 under numpy.core
        from numpy._core import multiarray

        prefix = "numpy._core.multiarray"
    except ImportError:
        from numpy.core import multiarray

        prefix = "numpy.core.multiarray"
    # Pickles name these two by their import path, which differs from their __module__: register the path.
    safe = [(multiarray._reconstruct, f"{prefix}._reconstruct"), (multiarray.scalar, f"{prefix}.scalar")]
    safe += [np.ndarray, np.dtype]
    safe += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")]
    add(safe)
    _APPLIED.append("weights_only allow-list for numpy arrays/scalars in checkpoints (torch >= 2.6)")


# ----------------------------------------------------------------------------------------------------------------
# ``torch.jit.script`` deprecation warnings at import (torch 2.14 here)
# Symptom: every command prints ``FutureWarning: `torch.jit.script` is deprecated`` a few times: fvcore's
# nn/focal_loss.py and detectron2's modeling/box_regression.py script functions when they are imported, and our
# models run neither scripted function. Fix: import those two modules once with exactly this warning ignored; any
# other warning raised meanwhile is shown as usual, and user code that scripts still gets the warning.
# ----------------------------------------------------------------------------------------------------------------
_SCRIPTING_AT_IMPORT = ("fvcore.nn.focal_loss", "detectron2.modeling.box_regression")
_JIT_SCRIPT_DEPRECATED = "`torch.jit.script` is deprecated"


def _fix_jit_script_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in _SCRIPTING_AT_IMPORT:
            importlib.import_module(name)
    quieted = False
    for w in caught:
        if issubclass(w.category, FutureWarning) and str(w.message).startswith(_JIT_SCRIPT_DEPRECATED):
            quieted = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if quieted:
        _APPLIED.append("torch.jit.script deprecation warnings at fvcore/detectron2 import silenced")


# ----------------------------------------------------------------------------------------------------------------
# ``torch.meshgrid`` without ``indexing`` in detectron2's anchor generator
# Symptom: ``UserWarning: torch.meshgrid: in an upcoming release, it will be required to pass the indexing
# argument`` at the first step of every RetinaNet and R-CNN run (modeling/anchor_generator.py calls
# ``torch.meshgrid(shifts_y, shifts_x)``, meaning today's default, "ij"). Fix: that one function runs with exactly
# this warning ignored. torch gives it once per process, so a later call of one's own without indexing is silent too.
# ----------------------------------------------------------------------------------------------------------------
_MESHGRID_INDEXING = r"torch\.meshgrid: in an upcoming release"


def _fix_meshgrid_warning() -> None:
    import torch

    if "indexing" not in inspect.signature(torch.meshgrid).parameters:
        return  # torch < 1.10: no indexing argument, no warning
    from detectron2.modeling import anchor_generator

    original = anchor_generator._create_grid_offsets
    if getattr(original, "_pvt_d2_quiet", False):
        return

    @functools.wraps(original)
    def _create_grid_offsets(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MESHGRID_INDEXING, category=UserWarning)
            return original(*args, **kwargs)

    _create_grid_offsets._pvt_d2_quiet = True
    anchor_generator._create_grid_offsets = _create_grid_offsets
    _APPLIED.append("torch.meshgrid indexing warning in detectron2's anchor generator silenced")


def apply() -> None:
    """Apply every needed fix once. Called by ``import pvt_d2``."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    # Order: the two import-time fixes first, then fixes that import detectron2 modules.
    _fix_pillow()
    _fix_compiled_ops()
    _fix_jit_script_warnings()  # before any fix below imports these modules
    _fix_pkg_resources()
    _fix_caffe2()
    _fix_numpy_aliases()
    _fix_cpu_distributed()
    _fix_coco_fast_path()
    _fix_weights_only()
    _fix_meshgrid_warning()


def applied() -> List[str]:
    """The fixes this process needed, in the order they were applied."""
    return list(_APPLIED)
