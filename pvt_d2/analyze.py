"""Parameter and FLOP tables per module: ``python -m pvt_d2.analyze --config-file CFG --tasks parameter flop
[--size H W] [--model backbone|full] [KEY VALUE ...]``.

Conventions are fvcore's / detectron2's (1 multiply-add = 1 FLOP). Fused attention
(``scaled_dot_product_attention``) is invisible to fvcore's default counters, so it gets a handle here that counts
its two matmuls (Q·Kᵀ and attention·V), as the PVT authors count attention.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, List, Optional

import torch

from .cli import help_description

__all__ = ["sdpa_flop_handle", "flop_analysis", "backbone_gflops", "main"]


def sdpa_flop_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs of ``aten::scaled_dot_product_attention``: B·heads·Nq·Nk·(d_qk + d_v) multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    *batch, nq, dqk = q
    nk, dv = k[-2], v[-1]
    b = 1
    for s in batch:
        b *= s
    return b * nq * nk * (dqk + dv)


_EXTRA_HANDLES = {"aten::scaled_dot_product_attention": sdpa_flop_handle}


def flop_analysis(model: torch.nn.Module, inputs):
    """fvcore's FlopCountAnalysis (detectron2's for detectron2-format inputs) with the attention handle."""
    if isinstance(inputs, torch.Tensor):
        from fvcore.nn import FlopCountAnalysis
    else:
        from detectron2.utils.analysis import FlopCountAnalysis
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**_EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def backbone_gflops(arch: str, size=(224, 224)) -> float:
    """GFLOPs of the PVT detection backbone (four stages) at one image of ``size``."""
    from .modeling import PVT

    model = PVT(arch).eval()
    with torch.no_grad():
        return flop_analysis(model, torch.zeros(1, 3, *size)).total() / 1e9


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvt_d2.analyze", description=help_description(__doc__))
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter", "flop"])
    parser.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="input size for flop (default: 224 224 for --model backbone, else INPUT.MIN_SIZE_TEST "
                             "x MAX_SIZE_TEST-limited 4:3 image)")
    parser.add_argument("--model", choices=["backbone", "full"], default="full",
                        help="analyze the PVT backbone alone or the whole detector / segmentor")
    parser.add_argument("--depth", type=int, default=3, help="module depth of the tables")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    from detectron2.modeling import build_model
    from detectron2.utils.logger import setup_logger
    from fvcore.nn import flop_count_table, parameter_count_table

    from . import setup_cfg
    from .engine.checkpointer import _find_pvt

    setup_logger(name="pvt_d2", abbrev_name="pvt_d2")
    logger = logging.getLogger("pvt_d2.analyze")
    cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    if args.model == "backbone":
        found = _find_pvt(model)
        if found is None:
            raise SystemExit(f"{args.config_file}: the model has no PVT backbone")
        model = found[1]
    summary = []
    if "parameter" in args.tasks:
        total = sum(p.numel() for p in model.parameters())
        print(parameter_count_table(model, max_depth=args.depth))
        summary.append(f"{total / 1e6:.2f} M parameters")
    if "flop" in args.tasks:
        if args.size:
            h, w = args.size
        elif args.model == "backbone":
            h, w = 224, 224
        else:
            h = cfg.INPUT.MIN_SIZE_TEST
            w = min(cfg.INPUT.MAX_SIZE_TEST, h * 4 // 3)
        if args.model == "backbone":
            inputs = torch.zeros(1, 3, h, w)
        else:
            inputs = [{"image": torch.zeros(3, h, w), "height": h, "width": w}]
        with torch.no_grad():
            analysis = flop_analysis(model, inputs)
            print(flop_count_table(analysis, max_depth=args.depth))
            summary.append(f"{analysis.total() / 1e9:.2f} GFLOPs at {h}x{w}")
    logger.info("%s (%s): %s", args.config_file, args.model, "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
