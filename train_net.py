#!/usr/bin/env python
"""Train and evaluate PVT models with detectron2 (detectron2's tools/train_net.py skeleton around pvt_d2.engine).

    python train_net.py --config-file configs/COCO-Detection/retinanet_pvt_v2_b0_fpn_1x.yaml
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --resume                      # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CFG --num-gpus 2                   # processes; gloo when there is no GPU
"""
import logging
import os
import time

import pvt_d2
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from pvt_d2 import PVTCheckpointer, Trainer, setup_cfg, visualize_test_set

logger = logging.getLogger("pvt_d2.train_net")


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="pvt_d2", abbrev_name="pvt_d2")
    logger.info("detectron2 compatibility fixes in effect: %s", pvt_d2.compat.applied() or "none")
    logger.info("freed CPU memory kept for reuse (pvt_d2.cpu_allocator): %s; glibc tunables: %s",
                pvt_d2.keep_freed_memory(), os.environ.get("GLIBC_TUNABLES", "none"))
    return cfg


def main(args):
    cfg = setup(args)
    start = time.perf_counter()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        PVTCheckpointer(model, save_dir=cfg.OUTPUT_DIR, trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        what = "evaluation"
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        model = trainer.model
        what = f"training to iteration {cfg.SOLVER.MAX_ITER}"
    vis_dir = visualize_test_set(cfg, model)
    if comm.is_main_process():
        logger.info(
            "Finished %s in %.1f min; %s; outputs in %s%s", what, (time.perf_counter() - start) / 60,
            pvt_d2.summarize_results(results), cfg.OUTPUT_DIR,
            f"; prediction images in {vis_dir}" if vis_dir else "",
        )
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    pvt_d2.cpu_allocator.restart_with_tuned_malloc()  # once, before any work: glibc reads its tunables at start-up
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
