"""Convert the authors' or timm's PVT ImageNet weights to a detectron2 checkpoint:
``python -m pvt_d2.convert SRC DST [--arch ARCH] [--prefix backbone.bottom_up.] [--trust-pickle]``.

DST loads with detectron2's own ``DetectionCheckpointer`` as ``MODEL.WEIGHTS`` of a PVT config (FPN builders use the
default prefix; ``build_pvt_backbone`` without FPN uses ``--prefix backbone.``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from detectron2.utils.logger import setup_logger

from .checkpoint import CheckpointError, detect_arch, to_detectron2_checkpoint
from .cli import help_description
from .engine.checkpointer import atomic_torch_save

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvt_d2.convert", description=help_description(__doc__))
    parser.add_argument("src", help="weights file: .pth/.pt/.bin/.safetensors, flat or wrapped in model/state_dict")
    parser.add_argument("dst", help="output detectron2 checkpoint (.pth)")
    parser.add_argument("--arch", default=None, help="fail unless the weights are of this variant (e.g. pvt_small)")
    parser.add_argument("--prefix", default="backbone.bottom_up.", help="module path of the PVT inside the model")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pickled Python objects in SRC (may execute code: only for files you trust)")
    args = parser.parse_args(argv)
    setup_logger(name="pvt_d2", abbrev_name="pvt_d2")
    logger = logging.getLogger("pvt_d2.convert")
    try:
        ckpt = to_detectron2_checkpoint(args.src, prefix=args.prefix, trust_pickle=args.trust_pickle, arch=args.arch)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    arch = detect_arch({k[len(args.prefix):]: v for k, v in ckpt["model"].items()})
    atomic_torch_save(ckpt, args.dst)
    logger.info("Converted %s (%s, %d tensors) to %s", args.src, arch, len(ckpt["model"]), args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
