"""pvt_d2: Pyramid Vision Transformer (PVT v1 and v2) for detectron2.

Importing the package applies the detectron2 compatibility fixes (``pvt_d2.compat``) first, then imports the modules
that register backbones and datasets with detectron2, and exports the public names.
"""
from . import compat

compat.apply()

from .config import add_pvt_config, setup_cfg  # noqa: E402
from .modeling import PVT, PVT_ARCHS, Detr, PVTBackbone, PVTClassifier, SemanticFPNHead  # noqa: E402  (registers)
from .data.shapes import ensure_shapes_generated, register_shapes_datasets  # noqa: E402
from .engine import PVTCheckpointer, Trainer, summarize_results  # noqa: E402
from .predictor import Predictor, visualize_images, visualize_test_set  # noqa: E402
from .cpu_allocator import keep_freed_memory, restart_with_tuned_malloc  # noqa: E402

register_shapes_datasets()

__version__ = "0.1.0"

__all__ = [
    "compat", "add_pvt_config", "setup_cfg", "PVT", "PVT_ARCHS", "PVTBackbone", "PVTClassifier", "Detr",
    "SemanticFPNHead",
    "ensure_shapes_generated", "register_shapes_datasets", "PVTCheckpointer", "Trainer", "summarize_results",
    "Predictor", "visualize_images", "visualize_test_set", "keep_freed_memory", "restart_with_tuned_malloc",
]
