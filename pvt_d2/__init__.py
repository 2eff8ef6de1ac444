"""pvt_d2: Pyramid Vision Transformer (PVT v1 and v2) for detectron2.

Importing the package applies the detectron2 compatibility fixes (``pvt_d2.compat``) first, then imports the modules
that register backbones, meta-architectures and datasets with detectron2.
"""
from . import compat

compat.apply()

__version__ = "0.1.0"
