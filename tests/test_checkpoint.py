"""Reading the authors', timm's and our PVT weights; detecting the variant; converting for detectron2."""
import argparse

import pytest
import torch

import pvt_d2  # noqa: F401  (compat fixes first)
from pvt_d2.checkpoint import (
    CheckpointError,
    detect_arch,
    load_checkpoint_file,
    to_detectron2_checkpoint,
    to_pvt_state_dict,
    unwrap_state_dict,
)
from pvt_d2.modeling.classifier import PVTClassifier
from pvt_d2.modeling.pvt import PVT, PVT_ARCHS


with torch.device("meta"):
    PVT_KEYS = {arch: set(PVT(arch).state_dict()) for arch in PVT_ARCHS}


def authors_layout(state_dict):
    """Our keys -> the authors' released-checkpoint keys."""
    return {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in state_dict.items()}


def timm_layout(state_dict):
    """Our keys -> timm's pvt_v2 keys (the inverse of the conversion under test, written out independently)."""
    out = {}
    for k, v in state_dict.items():
        head, _, rest = k.partition(".")
        if head == "patch_embed1":
            k = "patch_embed." + rest
        elif head.startswith("patch_embed"):
            k = f"stages.{int(head[-1]) - 1}.downsample.{rest}"
        elif head.startswith("block"):
            k = f"stages.{int(head[-1]) - 1}.blocks.{rest}"
        elif head.startswith("norm") and head != "norm":
            k = f"stages.{int(head[-1]) - 1}.norm.{rest}"
        out[k] = v
    return out


@pytest.fixture(scope="module")
def tiny_classifier():
    return PVTClassifier("pvt_tiny")


@pytest.fixture(scope="module")
def b0_classifier():
    return PVTClassifier("pvt_v2_b0")


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("fixture", ["tiny_classifier", "b0_classifier"])
def test_authors_classification_checkpoint_loads_strictly_into_the_backbone(fixture, request):
    source = request.getfixturevalue(fixture)
    authors = authors_layout(source.state_dict())
    assert "head.weight" in authors
    model = PVT(source.arch)
    model.load_state_dict(to_pvt_state_dict(authors), strict=True)
    expected = {k: v for k, v in source.state_dict().items() if k in model.state_dict()}
    assert_same_tensors(model.state_dict(), expected)


def test_v1_backbone_keeps_stage4_pos_embed_with_cls_row_and_drops_classifier_keys(tiny_classifier):
    sd = to_pvt_state_dict(authors_layout(tiny_classifier.state_dict()))
    assert sd["pos_embed4"].shape == (1, 50, 512)
    assert not {"cls_token", "norm.weight", "head.weight"} & set(sd)
    kept = to_pvt_state_dict(authors_layout(tiny_classifier.state_dict()), drop_classifier=False)
    assert {"cls_token", "norm.weight", "head.weight"} <= set(kept)


def test_timm_state_dict_converts_to_our_keys(b0_classifier):
    ours = b0_classifier.state_dict()
    converted = to_pvt_state_dict(timm_layout(ours), drop_classifier=False)
    assert_same_tensors(converted, ours)
    # timm's features_only models write stages_{i}
    underscored = {k.replace("stages.", "stages_"): v for k, v in timm_layout(ours).items()}
    assert_same_tensors(to_pvt_state_dict(underscored, drop_classifier=False), ours)


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "backbone.bottom_up."])
def test_prefixed_state_dicts_select_the_pvt_keys(prefix, b0_classifier):
    sd = {prefix + k: v for k, v in authors_layout(b0_classifier.state_dict()).items()}
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 3)  # a detector's other keys are ignored
    assert set(to_pvt_state_dict(sd)) == set(PVT("pvt_v2_b0").state_dict())


@pytest.mark.parametrize("wrap", ["flat", "model", "state_dict", "module_prefix", "nested"])
def test_load_checkpoint_file_unwraps_containers(wrap, tmp_path, b0_classifier):
    sd = authors_layout(b0_classifier.state_dict())
    obj = {
        "flat": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "optimizer": {"lr": torch.tensor(0.1)}},
        "module_prefix": {"module." + k: v for k, v in sd.items()},
        "nested": {"model": {"state_dict": {"module." + k: v for k, v in sd.items()}}},
    }[wrap]
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    assert_same_tensors(load_checkpoint_file(path), sd)


def test_load_checkpoint_file_reads_safetensors(tmp_path, b0_classifier):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = {k: v.contiguous() for k, v in b0_classifier.state_dict().items()}
    path = tmp_path / "weights.safetensors"
    safetensors.save_file(sd, str(path))
    assert_same_tensors(load_checkpoint_file(path), sd)


def test_pickled_objects_are_refused_unless_trusted(tmp_path, b0_classifier):
    sd = b0_classifier.state_dict()
    path = tmp_path / "training_state.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.1)}, path)  # like the authors' training checkpoints
    with pytest.raises(CheckpointError, match=r"training_state\.pth.*trust_pickle=True"):
        load_checkpoint_file(path)
    assert_same_tensors(load_checkpoint_file(path, trust_pickle=True), sd)


def test_missing_and_unreadable_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint_file(tmp_path / "nope.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint_file(bad)


def test_unwrap_rejects_non_tensor_entries():
    with pytest.raises(CheckpointError, match="not tensors: 'epoch'"):
        unwrap_state_dict({"w": torch.zeros(1), "epoch": 3})


@pytest.mark.parametrize("arch", list(PVT_ARCHS))
def test_detect_arch_recognises_every_variant(arch):
    with torch.device("meta"):  # shapes are all detect_arch reads
        sd = PVTClassifier(arch).state_dict()
    assert detect_arch(authors_layout(sd)) == arch
    assert detect_arch({"backbone.bottom_up." + k: v for k, v in sd.items() if k in PVT_KEYS[arch]}) == arch
    if arch.startswith("pvt_v2"):
        assert detect_arch(timm_layout(sd)) == arch


def test_detect_arch_names_what_it_found_when_nothing_matches():
    with torch.device("meta"):
        sd = PVT(None, version=2, depths=(2, 3, 2, 2), embed_dims=(32, 64, 160, 256)).state_dict()
    with pytest.raises(CheckpointError, match=r"depths=\(2, 3, 2, 2\).*embed_dims=\(32, 64, 160, 256\).*pvt_v2_b0"):
        detect_arch(sd)


def test_non_pvt_state_dict_is_rejected_with_its_keys():
    resnet = {"stem.conv1.weight": torch.zeros(1), "res2.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="not a PVT state dict.*stem.conv1.weight"):
        to_pvt_state_dict(resnet)


def test_unrecognised_keys_are_named():
    sd = authors_layout(PVT("pvt_v2_b0").state_dict())
    sd["block1.extra_token"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unrecognised keys.*block1.extra_token"):
        to_pvt_state_dict(sd)


def test_to_detectron2_checkpoint_prefixes_backbone_keys(tmp_path, b0_classifier):
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(authors_layout(b0_classifier.state_dict()), path)
    ckpt = to_detectron2_checkpoint(path, prefix="backbone.bottom_up.")
    assert ckpt["__author__"] == "pvt_d2" and ckpt["matching_heuristics"] is False
    assert set(ckpt["model"]) == {"backbone.bottom_up." + k for k in PVT_KEYS["pvt_v2_b0"]}
    assert torch.equal(ckpt["model"]["backbone.bottom_up.block1.0.mlp.dwconv.weight"],
                       b0_classifier.block1[0].mlp.dwconv.weight)
    plain = to_detectron2_checkpoint(b0_classifier.state_dict(), prefix="backbone.")
    assert "backbone.patch_embed1.proj.weight" in plain["model"]
    with pytest.raises(CheckpointError, match="weights are pvt_v2_b0, expected pvt_v2_b1"):
        to_detectron2_checkpoint(path, arch="pvt_v2_b1")


def test_detectron2_checkpointer_loads_the_converted_checkpoint(tmp_path, b0_classifier):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from pvt_d2.config import add_pvt_config
    import pvt_d2.modeling.backbone  # noqa: F401  (registers the builders)

    cfg = get_cfg()
    add_pvt_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_pvt_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
    model = torch.nn.Module()
    model.backbone = build_backbone(cfg)
    path = tmp_path / "d2.pth"
    torch.save(to_detectron2_checkpoint(b0_classifier.state_dict()), path)
    DetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.backbone.bottom_up.norm4.weight, b0_classifier.norm4.weight)
    assert torch.equal(model.backbone.bottom_up.block2[1].attn.kv.weight, b0_classifier.block2[1].attn.kv.weight)
