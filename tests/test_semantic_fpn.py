"""Semantic FPN with PVT: the head, the ADE20K configs, the authors' augmentations, ADE20K preparation, drawing."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import pvt_d2  # noqa: F401  (compat fixes, registrations)
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import EventStorage

from pvt_d2 import Predictor, Trainer, setup_cfg
from pvt_d2.data import prepare_ade20k as prep
from pvt_d2.data.augmentations import (
    PadToSize, PhotometricDistortion, PhotometricTransform, ResizeScaleRatio, build_sem_seg_augmentation,
)
from pvt_d2.data.mappers import build_mapper
from pvt_d2.data.shapes import register_shapes_datasets
from pvt_d2.modeling.semantic_fpn import SemanticFPNHead

# PVT_FACTS.md §6: totals with 150 classes, in millions.
TOTALS_M = {
    "pvt_tiny": 16.98, "pvt_small": 28.24, "pvt_medium": 47.96, "pvt_large": 65.12, "pvt_v2_b0": 7.55,
    "pvt_v2_b1": 17.76, "pvt_v2_b2": 29.12, "pvt_v2_b2_li": 26.31, "pvt_v2_b3": 48.99, "pvt_v2_b4": 66.31,
    "pvt_v2_b5": 85.71,
}
ADE = "configs/ADE20K/semantic_fpn_{}_40k.yaml"
SHAPES = "configs/Synthetic/semantic_fpn_pvt_v2_b0_shapes.yaml"
TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.SEM_SEG_AUG.SCALE", "(96, 64)", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "TEST.VIS_NUM_IMAGES", "0",
]
PALETTE = np.array([[20, 20, 20], [230, 40, 40], [40, 220, 60], [50, 60, 240], [240, 230, 30]], dtype=np.uint8)


def _blocks(h: int, w: int, block: int, classes: int, seed: int) -> np.ndarray:
    """(h, w) uint8 label map of random classes in ``block``-sized squares (asymmetric, so flips show)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, classes, size=(-(-h // block), -(-w // block))).astype(np.uint8)
    return np.kron(grid, np.ones((block, block), dtype=np.uint8))[:h, :w]


def _write_pair(folder, stem: str, label: np.ndarray) -> dict:
    """An image whose colour encodes ``label`` (PALETTE) and the label, as PNGs; their dataset dict."""
    os.makedirs(folder, exist_ok=True)
    img, seg = os.path.join(folder, stem + ".png"), os.path.join(folder, stem + "_label.png")
    Image.fromarray(PALETTE[label]).save(img)
    Image.fromarray(label).save(seg)
    return {"file_name": img, "sem_seg_file_name": seg, "height": label.shape[0], "width": label.shape[1]}


# --- model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(TOTALS_M))
def test_parameter_totals_with_150_classes_match_pvt_facts(arch):
    cfg = setup_cfg(ADE.format(arch), ["MODEL.WEIGHTS", ""])
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e6 - TOTALS_M[arch]) <= 0.05, total
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.bottom_up."))
    assert head == (4_135_574 if arch == "pvt_v2_b0" else 4_266_646)


def test_head_reads_p2_to_p5_with_batch_norm_and_dropout_before_the_classifier():
    cfg = setup_cfg(ADE.format("pvt_v2_b0"), ["MODEL.WEIGHTS", ""])
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    head = model.sem_seg_head
    assert isinstance(head, SemanticFPNHead) and head.in_features == ["p2", "p3", "p4", "p5"]
    assert "p6" in model.backbone.output_shape()  # built, unused, and parameter-free:
    assert not any(n.startswith("backbone.top_block") for n, _ in model.named_parameters())
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    norms = [m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 1 + 1 + 2 + 3 and all(type(m).__name__ == "NaiveSyncBatchNorm" for m in norms)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d) and m is not head.predictor]
    assert all(c.bias is None for c in convs)


def test_dropout_changes_training_outputs_only():
    head = SemanticFPNHead({"p2": _shape(8, 4), "p3": _shape(8, 8)}, num_classes=3, conv_dims=8, common_stride=4,
                           norm="", dropout=0.5)
    feats = {"p2": torch.randn(2, 8, 8, 8), "p3": torch.randn(2, 8, 4, 4)}
    head.eval()
    a, b = head.layers(feats), head.layers(feats)
    assert torch.equal(a, b)
    head.train()
    torch.manual_seed(0)
    assert not torch.allclose(head.layers(feats), a)
    no_dropout = SemanticFPNHead({"p2": _shape(8, 4)}, num_classes=3, conv_dims=8, common_stride=4, dropout=0.0)
    assert isinstance(no_dropout.dropout, torch.nn.Identity)


def _shape(channels, stride):
    from detectron2.layers import ShapeSpec

    return ShapeSpec(channels=channels, stride=stride)


def test_head_features_missing_from_the_backbone_are_named():
    cfg = setup_cfg(SHAPES, ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['p2', 'p3', 'p7']"])
    with pytest.raises(ValueError, match="p7"):
        Trainer.build_model(cfg)


def _train_batch(h=64, w=64, n=2):
    torch.manual_seed(0)
    batch = []
    for _ in range(n):
        label = torch.randint(0, 150, (h, w))
        label[: h // 4] = 255
        batch.append({"image": torch.rand(3, h, w) * 255, "sem_seg": label})
    return batch


@pytest.mark.parametrize("arch", sorted(TOTALS_M))
def test_ade20k_config_builds_trains_one_step_and_predicts(arch, tmp_path):
    cfg = setup_cfg(ADE.format(arch), TINY + ["OUTPUT_DIR", str(tmp_path)])
    assert cfg.DATASETS.TRAIN == ("ade20k_sem_seg_train",) and cfg.SOLVER.MAX_ITER == 40000
    # the config's training mapper (authors' augmentation) on a tiny image pair
    d = _write_pair(tmp_path, "a", _blocks(40, 120, 8, 5, seed=1))
    mapped = build_mapper(cfg, is_train=True)(d)
    assert mapped["image"].shape == (3, 64, 64) and mapped["sem_seg"].shape == (64, 64)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    model.train()
    with EventStorage():
        losses = model([mapped] + _train_batch(n=1))
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    before = model.sem_seg_head.predictor.weight.detach().clone()
    losses["loss_sem_seg"].backward()
    assert model.backbone.bottom_up.patch_embed1.proj.weight.grad.abs().sum() > 0
    optimizer.step()
    scheduler.step()
    assert not torch.equal(before, model.sem_seg_head.predictor.weight)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 48, 70) * 255, "height": 96, "width": 140}])
    assert out[0]["sem_seg"].shape == (150, 96, 140)


# --- augmentations -------------------------------------------------------------------------------------------
def test_resize_fits_the_image_into_scale_times_ratio_keeping_aspect():
    fixed = ResizeScaleRatio((2048, 512), (1.0, 1.0))
    t = fixed.get_transform(np.zeros((100, 400, 3), np.uint8))
    assert (t.new_h, t.new_w) == (512, 2048)  # long edge binds
    t = fixed.get_transform(np.zeros((300, 400, 3), np.uint8))
    assert (t.new_h, t.new_w) == (512, 683)  # short edge binds
    t = ResizeScaleRatio((512, 2048), (0.5, 0.5)).get_transform(np.zeros((300, 400, 3), np.uint8))
    assert (t.new_h, t.new_w) == (256, 341)  # scale in either order
    np.random.seed(0)
    sides = [ResizeScaleRatio((2048, 512), (0.5, 2.0)).get_transform(np.zeros((300, 400, 3), np.uint8)).new_h
             for _ in range(200)]
    assert 256 <= min(sides) < 300 and 950 < max(sides) <= 1024
    with pytest.raises(ValueError, match="ratio_range"):
        ResizeScaleRatio((2048, 512), (2.0, 0.5))


def _sem_seg_cfg(*opts):
    return setup_cfg(SHAPES, ["INPUT.SEM_SEG_AUG.SCALE", "(150, 80)", "INPUT.SEM_SEG_AUG.RATIO_RANGE", "(0.5, 2.0)",
                              "INPUT.CROP.SIZE", "(64, 80)"] + list(opts))


def test_augmentation_list_follows_the_config():
    cfg = setup_cfg(ADE.format("pvt_small"), ["MODEL.WEIGHTS", ""])
    augs = build_sem_seg_augmentation(cfg)
    assert [type(a) for a in augs] == [ResizeScaleRatio, T.RandomCrop_CategoryAreaConstraint, T.RandomFlip,
                                       PhotometricDistortion, PadToSize]
    crop = augs[1]
    assert tuple(crop.crop_aug.crop_size) == (512, 512) and crop.single_category_max_area == 0.75
    assert crop.ignored_category == 255
    assert augs[4].size == (512, 512) and augs[4].seg_pad_value == 255
    assert augs[4].pad_value == pytest.approx((123.675, 116.28, 103.53))
    off = setup_cfg(ADE.format("pvt_small"), ["INPUT.SEM_SEG_AUG.PHOTOMETRIC", "False", "INPUT.CROP.ENABLED", "False",
                                              "INPUT.RANDOM_FLIP", "none"])
    assert [type(a) for a in build_sem_seg_augmentation(off)] == [ResizeScaleRatio]
    assert not setup_cfg(SHAPES, ["INPUT.SEM_SEG_AUG.ENABLED", "False"]).INPUT.SEM_SEG_AUG.ENABLED
    default = build_mapper(setup_cfg(SHAPES, ["INPUT.SEM_SEG_AUG.ENABLED", "False"]), is_train=True)
    assert T.ResizeShortestEdge in [type(a) for a in default.augmentations.augs]  # detectron2's own pipeline
    assert not any(isinstance(a, (ResizeScaleRatio, PhotometricDistortion)) for a in default.augmentations.augs)
    test = build_mapper(cfg, is_train=False)
    assert [type(a) for a in test.augmentations.augs] == [T.ResizeShortestEdge]
    assert test.augmentations.augs[0].short_edge_length == (512, 512) and test.augmentations.augs[0].max_size == 2048


@pytest.mark.parametrize("photometric", [False, True])
def test_training_mapper_keeps_image_and_label_aligned(tmp_path, photometric):
    """The label is the image's colour class; after resize, crop, flip and padding they must still agree."""
    cfg = _sem_seg_cfg("INPUT.SEM_SEG_AUG.PHOTOMETRIC", str(photometric))
    mapper = build_mapper(cfg, is_train=True)
    d = _write_pair(tmp_path, "x", _blocks(90, 130, 16, 5, seed=3))
    mean = np.round(np.array(cfg.MODEL.PIXEL_MEAN)).astype(np.int64)
    padded = 0
    for seed in range(30):
        np.random.seed(seed)
        out = mapper(d)
        img = out["image"].permute(1, 2, 0).numpy().astype(np.int64)
        seg = out["sem_seg"].numpy()
        assert img.shape[:2] == seg.shape == (64, 80)
        pad = seg == 255
        padded += bool(pad.any())
        assert (img[pad] == mean).all()  # padding: pixel mean in the image, ignore in the label
        # pixels inside a uniform 5x5 label neighbourhood, away from resampling blur at block edges
        inner = np.zeros_like(pad)
        inner[2:-2, 2:-2] = True
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                inner &= np.roll(seg, (dy, dx), axis=(0, 1)) == seg
        inner &= ~pad
        assert inner.sum() > 200
        if photometric:
            # colour changes everywhere alike: each label's pixels share one colour, distinct labels differ
            colours = {int(k): img[inner & (seg == k)].mean(axis=0) for k in np.unique(seg[inner])}
            for k, c in colours.items():
                assert np.abs(img[inner & (seg == k)] - c).max() <= 12
        else:
            np.testing.assert_allclose(img[inner], PALETTE[seg[inner]], atol=3)
    assert padded > 0  # some draws were smaller than the crop


def test_photometric_transform_changes_colours_only():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    seg = rng.integers(0, 5, size=(20, 30), dtype=np.uint8)
    t = PhotometricTransform(brightness=10.0)
    np.testing.assert_array_equal(t.apply_image(img), np.clip(img.astype(int) + 10, 0, 255))
    t = PhotometricTransform(contrast=0.5)
    np.testing.assert_array_equal(t.apply_image(img), (img * 0.5).astype(np.uint8))
    assert np.array_equal(PhotometricTransform().apply_image(img), img)
    gray = np.full((4, 4, 3), 128, np.uint8)
    assert np.array_equal(PhotometricTransform(hue=40, saturation=1.5).apply_image(gray), gray)  # no hue in grey
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    shifted = PhotometricTransform(hue=60, image_format="RGB").apply_image(red)  # 120 degrees: red -> green
    assert shifted[0, 0, 1] > 150 and shifted[0, 0, 0] < 50
    shifted_bgr = PhotometricTransform(hue=60, image_format="BGR").apply_image(red[..., ::-1].copy())
    np.testing.assert_array_equal(shifted_bgr[..., ::-1], shifted)
    t = PhotometricDistortion("RGB").get_transform(img)
    assert np.array_equal(t.apply_segmentation(seg), seg)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        PhotometricDistortion("L")


def test_pad_to_size_pads_bottom_right_only_when_smaller():
    img = np.full((5, 7, 3), 9, np.uint8)
    seg = np.ones((5, 7), np.uint8)
    t = PadToSize((8, 6), pad_value=(1.4, 2.6, 300.0), seg_pad_value=255).get_transform(img)
    out, lab = t.apply_image(img), t.apply_segmentation(seg)
    assert out.shape == (8, 7, 3) and lab.shape == (8, 7)
    assert (out[:5] == 9).all() and (out[5:] == [1, 3, 255]).all()
    assert (lab[:5] == 1).all() and (lab[5:] == 255).all()
    assert isinstance(PadToSize((4, 4)).get_transform(img), T.NoOpTransform)


# --- training and evaluation through the Trainer ------------------------------------------------------------
def _register_tiny_shapes(root: str):
    register_shapes_datasets(root, num_train=8, num_val=4, prefix="semfpn_test")
    return ["DATASETS.TRAIN", "('semfpn_test_sem_seg_train',)", "DATASETS.TEST", "('semfpn_test_sem_seg_val',)"]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("semfpn_shapes"))


def test_trainer_trains_and_evaluates_miou_on_shapes(shapes_root, tmp_path):
    opts = _register_tiny_shapes(shapes_root) + ["SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)]
    cfg = setup_cfg(SHAPES, TINY + opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    assert pvt_d2.summarize_results(results).startswith("sem_seg mIoU ")


def _ddp_train(out_dir, shapes_root):
    from detectron2.utils import comm

    opts = _register_tiny_shapes(shapes_root)  # a spawned process starts without the parent's registrations
    cfg = setup_cfg(SHAPES, TINY + opts + ["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()", "OUTPUT_DIR", out_dir])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_cpu_training_syncs_batch_norm_and_leaves_no_unused_parameters(shapes_root, tmp_path):
    """gloo + naiveSyncBN: three DDP steps (an unused parameter would fail the second) and identical ranks,
    running statistics included (plain BN would keep per-rank statistics)."""
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("this test covers the CPU path")
    launch(_ddp_train, 2, dist_url="auto", args=(str(tmp_path), shapes_root))
    a, b = (torch.load(tmp_path / f"rank{r}.pth") for r in (0, 1))
    assert any("running_mean" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


# --- prediction drawing --------------------------------------------------------------------------------------
def test_predictor_draws_semantic_segmentation():
    cfg = setup_cfg(SHAPES, TINY)
    model = Trainer.build_model(cfg)
    predictor = Predictor(cfg, model=model)
    assert MetadataCatalog.get("shapes_sem_seg_val").stuff_classes == predictor.metadata.stuff_classes
    image = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    outputs = predictor(image)
    assert outputs["sem_seg"].shape == (4, 50, 70)
    drawing = predictor.draw(image, outputs)
    assert drawing.shape == (50, 70, 3) and drawing.dtype == np.uint8
    assert not np.array_equal(drawing, image[:, :, ::-1])


# --- ADE20K preparation --------------------------------------------------------------------------------------
def _fake_ade20k(parent, n_train=3, n_val=2) -> str:
    root = os.path.join(parent, prep.ADE20K_DIRNAME)
    rng = np.random.default_rng(0)
    for split, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        os.makedirs(os.path.join(root, "images", split))
        os.makedirs(os.path.join(root, "annotations", split))
        for i in range(n):
            stem = f"{prefix}_{i + 1:08d}"
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
                os.path.join(root, "images", split, stem + ".jpg"))
            label = rng.integers(0, 151, (12, 16)).astype(np.uint8)
            label[0, :4] = [0, 1, 150, 37]
            Image.fromarray(label).save(os.path.join(root, "annotations", split, stem + ".png"))
    return root


def test_prepare_ade20k_converts_labels_for_detectron2(tmp_path, capsys):
    root = _fake_ade20k(str(tmp_path))
    assert prep.main([str(tmp_path)]) == 0  # the parent folder works as well as the release folder
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "training 3 labels (3 converted, 0 already present" in summary
    assert "validation 2 labels (2 converted" in summary
    for split in prep.SPLITS:
        for name in os.listdir(os.path.join(root, "annotations", split)):
            src = np.asarray(Image.open(os.path.join(root, "annotations", split, name)))
            dst = np.asarray(Image.open(os.path.join(root, "annotations_detectron2", split, name)))
            assert dst.dtype == np.uint8 and dst.shape == src.shape
            np.testing.assert_array_equal(dst[0, :4], [255, 0, 149, 36])
            np.testing.assert_array_equal(dst[src == 0], 255)
            np.testing.assert_array_equal(dst[src > 0], src[src > 0] - 1)
    # detectron2's loader pairs them, as register_all_ade20k does
    from detectron2.data.datasets import load_sem_seg

    dicts = load_sem_seg(os.path.join(root, "annotations_detectron2", "validation"),
                         os.path.join(root, "images", "validation"), gt_ext="png", image_ext="jpg")
    assert len(dicts) == 2


def test_prepare_ade20k_skips_converted_files(tmp_path, capsys):
    root = _fake_ade20k(str(tmp_path))
    assert prep.main([root]) == 0
    marked = os.path.join(root, "annotations_detectron2", "training", "ADE_train_00000001.png")
    Image.fromarray(np.full((12, 16), 7, np.uint8)).save(marked)
    os.remove(os.path.join(root, "annotations_detectron2", "validation", "ADE_val_00000002.png"))
    capsys.readouterr()
    assert prep.main([root, "--workers", "2"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "training 3 labels (0 converted, 3 already present" in summary
    assert "validation 2 labels (1 converted, 1 already present" in summary
    assert (np.asarray(Image.open(marked)) == 7).all()  # left as it was


def test_prepare_ade20k_rejects_a_folder_that_is_not_the_release(tmp_path, capsys):
    wrong = tmp_path / "not_ade"
    (wrong / "images" / "training").mkdir(parents=True)
    with pytest.raises(prep.NotADE20KError, match="not_ade.*annotations/training"):
        prep.find_ade20k_root(str(wrong))
    assert prep.main([str(wrong)]) == 2
    assert str(wrong) in capsys.readouterr().err
    with pytest.raises(prep.NotADE20KError, match="does not exist"):
        prep.find_ade20k_root(str(tmp_path / "missing"))


def test_prepare_ade20k_rejects_labels_above_150_naming_the_file(tmp_path):
    root = _fake_ade20k(str(tmp_path), n_train=1, n_val=1)
    bad = os.path.join(root, "annotations", "training", "ADE_train_00000001.png")
    Image.fromarray(np.full((12, 16), 151, np.uint8)).save(bad)
    with pytest.raises(ValueError, match="ADE_train_00000001.png.*151"):
        prep.convert_ade20k(root)
