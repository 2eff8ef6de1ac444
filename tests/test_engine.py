"""The Trainer: optimizer recipes, exact resume, AMP settings, multi-process CPU training."""
import os
import shutil

import pytest
import torch

from pvt_d2 import Trainer, setup_cfg
from pvt_d2.data.stream import SeededBatchStream
from pvt_d2.engine.optimizer import build_optimizer, optimizer_param_groups

CFG = "configs/Synthetic/mask_rcnn_pvt_v2_b0_shapes.yaml"
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
    "MODEL.PVT.DROP_PATH_RATE", "0.1", "SEED", "7", "TEST.VIS_NUM_IMAGES", "0", "DATALOADER.NUM_WORKERS", "0",
]


def tiny_cfg(output_dir, *opts):
    return setup_cfg(CFG, TINY + ["OUTPUT_DIR", str(output_dir)] + list(opts))


def test_adamw_groups_follow_the_3x_recipe():
    cfg = setup_cfg("configs/COCO-InstanceSegmentation/mask_rcnn_pvt_small_fpn_3x_ms.yaml",
                    ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg)
    names = {p: n for n, p in model.named_parameters()}
    decay = {names[p]: g["weight_decay"] for g in optimizer_param_groups(cfg, model) for p in g["params"]}
    assert decay["backbone.bottom_up.pos_embed1"] == 0.0
    assert decay["backbone.bottom_up.block1.0.norm1.weight"] == 0.0
    assert decay["backbone.bottom_up.block1.0.attn.q.bias"] == 0.0
    assert decay["backbone.bottom_up.block1.0.attn.q.weight"] == 0.05
    assert decay["roi_heads.box_head.fc1.weight"] == 0.05
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and all(g["lr"] == 1e-4 for g in opt.param_groups)


def test_1x_recipe_decays_every_parameter():
    cfg = setup_cfg("configs/COCO-Detection/retinanet_pvt_v2_b0_fpn_1x.yaml", ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg)
    assert {g["weight_decay"] for g in optimizer_param_groups(cfg, model)} == {1e-4}
    assert cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.WARMUP_ITERS == 500 and cfg.SOLVER.WARMUP_FACTOR == 0.001


def test_backbone_multiplier_scales_backbone_lr_only():
    cfg = setup_cfg(CFG, ["SOLVER.BACKBONE_MULTIPLIER", "0.1"])
    model = Trainer.build_model(cfg)
    names = {p: n for n, p in model.named_parameters()}
    for g in optimizer_param_groups(cfg, model):
        for p in g["params"]:
            expected = 0.1 * cfg.SOLVER.BASE_LR if names[p].startswith("backbone.") else cfg.SOLVER.BASE_LR
            assert g["lr"] == pytest.approx(expected)


def test_seeded_stream_starts_anywhere_and_orders_batches_across_workers():
    data = [{"i": i} for i in range(7)]
    mapper = lambda d: {"i": d["i"], "r": float(torch.rand(()))}  # noqa: E731
    full = SeededBatchStream(data, mapper, 4, seed=3)
    later = SeededBatchStream(data, mapper, 4, seed=3, start_iter=5)
    assert later.batch(5) == full.batch(5)
    it = iter(torch.utils.data.DataLoader(SeededBatchStream(data, mapper, 4, seed=3, start_iter=2), batch_size=None,
                                          num_workers=2, collate_fn=lambda b: b))
    assert [next(it) for _ in range(4)] == [full.batch(i) for i in range(2, 6)]
    # Two ranks of a global batch of 4 take disjoint halves of the same positions.
    r0 = SeededBatchStream(data, mapper, 4, seed=3, rank=0, world_size=2).batch(1)
    r1 = SeededBatchStream(data, mapper, 4, seed=3, rank=1, world_size=2).batch(1)
    assert r0 + r1 == full.batch(1)


def _train_and_record(cfg, resume):
    from detectron2.engine import HookBase

    losses = {}

    class Record(HookBase):
        def after_step(self):
            losses[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()

    trainer = Trainer(cfg)
    trainer.register_hooks([Record()])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return losses, trainer


def test_resume_continues_exactly(tmp_path):
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()"]
    full, trainer = _train_and_record(tiny_cfg(tmp_path / "full", *opts), resume=False)
    final = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # An "interrupted" run: the same output folder holding only the checkpoint after iteration 2 (index 2).
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000002.pth", part / "model_0000002.pth")
    (part / "last_checkpoint").write_text("model_0000002.pth")
    ckpt = torch.load(part / "model_0000002.pth", weights_only=True)
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"], "optimizer state must be in the checkpoint"
    resumed, trainer2 = _train_and_record(tiny_cfg(part, *opts), resume=True)
    assert sorted(resumed) == [3, 4, 5]
    assert [resumed[i] for i in (3, 4, 5)] == [full[i] for i in (3, 4, 5)]
    for k, v in trainer2.model.state_dict().items():
        torch.testing.assert_close(v, final[k], rtol=0, atol=0, msg=k)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "1")
    trainer = Trainer(cfg)
    trainer.checkpointer.save("model_a")
    before = (tmp_path / "model_a.pth").read_bytes()

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        trainer.checkpointer.save("model_a")
    assert (tmp_path / "model_a.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"


def test_amp_on_cpu_uses_bfloat16(tmp_path):
    from pvt_d2.engine.train_loop import autocast_settings

    cfg = tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True")
    assert autocast_settings(cfg, "cpu") == (True, torch.bfloat16)
    assert autocast_settings(cfg, "cuda") == (True, torch.float16)
    losses, _ = _train_and_record(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2",
                                           "DATASETS.TEST", "()"), resume=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_full_model_gradient_clipping_bounds_the_total_norm(tmp_path):
    from pvt_d2.engine.train_loop import PVTTrainLoop

    model = torch.nn.Linear(4, 4)
    loop = PVTTrainLoop(model, [], torch.optim.SGD(model.parameters(), lr=0.0), clip_type="full_model",
                        clip_value=0.1)
    (model(torch.ones(1, 4)) * 100).sum().backward()
    loop._clip()
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(0.1, rel=1e-4)


def _ddp_train(out_dir):
    from detectron2.utils import comm

    cfg = tiny_cfg(out_dir, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_cpu_training_keeps_ranks_identical(tmp_path):
    from detectron2.engine import launch

    launch(_ddp_train, 2, dist_url="auto", args=(str(tmp_path),))
    a = torch.load(tmp_path / "rank0.pth")
    b = torch.load(tmp_path / "rank1.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_coco_format_dataset_named_on_the_command_line(tmp_path):
    import json

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from pvt_d2.data.shapes import ensure_shapes_generated, shapes_files

    root = str(tmp_path / "shapes")
    ensure_shapes_generated(root, num_train=2, num_val=2)
    files = shapes_files(root, "val")
    name = f"coco:{files['json_file']}:{files['image_root']}"
    cfg = setup_cfg(CFG, ["DATASETS.TEST", f"('{name}',)"])
    assert len(DatasetCatalog.get(name)) == 2
    assert MetadataCatalog.get(name).thing_classes == [c["name"] for c in json.load(open(files["json_file"]))["categories"]]
    assert cfg.DATASETS.TEST == (name,)
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES=5 but dataset"):
        setup_cfg(CFG, ["DATASETS.TEST", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        setup_cfg(CFG, ["DATASETS.TEST", "('coco:nope.json:images',)"])
