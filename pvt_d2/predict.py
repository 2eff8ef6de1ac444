"""Draw a model's predictions on images: ``python -m pvt_d2.predict --config-file CFG --input IMG_OR_DIR
--output DIR [KEY VALUE ...]`` (``MODEL.WEIGHTS`` among the overrides, e.g. ``MODEL.WEIGHTS output/model_final.pth``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional

from detectron2.utils.logger import setup_logger

from .cli import help_description

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvt_d2.predict", description=help_description(__doc__))
    parser.add_argument("--config-file", required=True, help="a config under configs/")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or directories of images")
    parser.add_argument("--output", required=True, help="directory for the drawn images (created)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw instances scoring at least this")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    setup_logger(name="pvt_d2", abbrev_name="pvt_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    logger = logging.getLogger("pvt_d2.predict")
    from . import Predictor, keep_freed_memory, setup_cfg, visualize_images

    keep_freed_memory()

    start = time.perf_counter()
    cfg = setup_cfg(args.config_file, args.opts)
    if not cfg.MODEL.WEIGHTS:
        parser.error("MODEL.WEIGHTS is empty: pass trained weights, e.g. MODEL.WEIGHTS output/model_final.pth")
    written = visualize_images(Predictor(cfg), args.input, args.output, score_threshold=args.score_threshold)
    logger.info("Drew predictions on %d images into %s in %.1f s", len(written), args.output,
                time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
