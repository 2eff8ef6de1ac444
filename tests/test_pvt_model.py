"""PVT model: variants, parameter counts, numerical parity with timm, v1 position embeddings, checkpointing."""
import pytest
import torch
import torch.nn.functional as F

import pvt_d2  # noqa: F401  (compat fixes first)
from pvt_d2.checkpoint import to_pvt_state_dict
from pvt_d2.modeling.classifier import PVTClassifier
from pvt_d2.modeling.pvt import PVT, PVT_ARCHS
from pvt_helpers import perturbed

# PVT_FACTS.md section 3: (classifier, detection backbone)
PARAM_COUNTS = {
    "pvt_tiny": (13_229_288, 12_714_752),
    "pvt_small": (24_485_864, 23_971_328),
    "pvt_medium": (44_208_104, 43_693_568),
    "pvt_large": (61_369_320, 60_854_784),
    "pvt_v2_b0": (3_666_760, 3_409_760),
    "pvt_v2_b1": (14_009_000, 13_496_000),
    "pvt_v2_b2_li": (22_553_512, 22_040_512),
    "pvt_v2_b2": (25_362_856, 24_849_856),
    "pvt_v2_b3": (45_238_696, 44_725_696),
    "pvt_v2_b4": (62_556_072, 62_043_072),
    "pvt_v2_b5": (81_956_008, 81_443_008),
}


def numel(model):
    return sum(p.numel() for p in model.parameters())


def test_variant_table_lists_the_eleven_archs():
    assert set(PVT_ARCHS) == set(PARAM_COUNTS)


@pytest.mark.parametrize("arch", list(PARAM_COUNTS))
def test_param_counts_match_pvt_facts(arch):
    classifier, backbone = PARAM_COUNTS[arch]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        assert numel(PVT(arch)) == backbone
        assert numel(PVTClassifier(arch)) == classifier


def test_explicit_spec_builds_the_same_model_as_the_arch_name():
    with torch.device("meta"):
        explicit = PVT(None, version=2, depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256))
        named = PVT("pvt_v2_b0")
    assert explicit.spec == named.spec
    assert {k: v.shape for k, v in explicit.state_dict().items()} == {k: v.shape for k, v in named.state_dict().items()}


def test_unknown_arch_raises_value_error_listing_valid_archs():
    with pytest.raises(ValueError, match="unknown PVT arch 'pvt_huge'.*pvt_v2_b2_li"):
        PVT("pvt_huge")


def test_invalid_out_indices_raise_value_error():
    with pytest.raises(ValueError, match="out_indices"):
        PVT("pvt_v2_b0", out_indices=(0, 4))


def test_stochastic_depth_ramps_linearly_over_all_blocks():
    model = PVT("pvt_tiny", drop_path_rate=0.7)
    rates = [blk.drop_path for i in range(1, 5) for blk in getattr(model, f"block{i}")]
    assert rates == pytest.approx([0.1 * k for k in range(8)])


@pytest.mark.parametrize("size", [(224, 224), (96, 160), (100, 130)])
def test_v2_b0_matches_timm_features_with_converted_weights(size):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = perturbed(timm.create_model("pvt_v2_b0", pretrained=False, features_only=True)).eval()
    model = PVT("pvt_v2_b0").eval()
    model.load_state_dict(to_pvt_state_dict(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert len(ours) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_v2_linear_sra_matches_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("pvt_v2_b2_li", pretrained=False, features_only=True).eval()
    model = PVT("pvt_v2_b2_li").eval()
    model.load_state_dict(to_pvt_state_dict(reference.state_dict()), strict=True)
    x = torch.randn(1, 3, 72, 104)
    with torch.no_grad():
        for a, b in zip(model(x), reference(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "arch, size, grids",
    [
        ("pvt_tiny", (100, 130), [(25, 32), (12, 16), (6, 8), (3, 4)]),  # v1: floor
        ("pvt_v2_b0", (100, 130), [(25, 33), (13, 17), (7, 9), (4, 5)]),  # v2: ceil
    ],
)
def test_output_grids_for_sizes_not_divisible_by_32(arch, size, grids):
    model = PVT(arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [tuple(o.shape[-2:]) for o in outs] == grids
    assert [o.shape[1] for o in outs] == list(model.embed_dims)


def test_v1_pos_embed_is_used_as_is_on_the_pretrained_grid():
    model = PVT("pvt_tiny")
    for i, (h, w) in enumerate([(56, 56), (28, 28), (14, 14), (7, 7)]):
        pos = model.pos_embed(i, h, w)
        expected = getattr(model, f"pos_embed{i + 1}")[:, 1:] if i == 3 else getattr(model, f"pos_embed{i + 1}")
        assert torch.equal(pos, expected)


def test_v1_pos_embed_resized_per_stage_when_token_counts_coincide_but_grids_differ():
    # 128x392: stage 1 is 32x98 = 3136 tokens, the count of the learned 56x56 grid; it must still be resized.
    model = PVT("pvt_tiny")
    learned = model.pos_embed1
    pos = model.pos_embed(0, 32, 98)
    expected = F.interpolate(learned.reshape(1, 56, 56, -1).permute(0, 3, 1, 2), size=(32, 98), mode="bilinear",
                             align_corners=False).flatten(2).transpose(1, 2)
    assert pos.shape == learned.shape
    torch.testing.assert_close(pos, expected)
    assert not torch.allclose(pos, learned)
    # stage 4 drops the cls-token row before resizing
    pos4 = model.pos_embed(3, 2, 3)
    expected4 = F.interpolate(model.pos_embed4[:, 1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2), size=(2, 3),
                              mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pos4, expected4)


def test_v1_forward_at_448_where_stage2_count_equals_the_stage1_pretrained_count():
    model = PVT("pvt_tiny", out_indices=(0, 1)).eval()  # stage 2 is 56x56 here (the authors' code crashes)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 448, 448))
    assert [tuple(o.shape[-2:]) for o in outs] == [(112, 112), (56, 56)]


def test_v1_resized_pos_embed_is_cached_in_inference_and_invalidated_by_updates():
    model = PVT("pvt_tiny").eval()
    with torch.no_grad():
        first = model.pos_embed(1, 10, 12)
        assert model.pos_embed(1, 10, 12) is first
        model.pos_embed2.mul_(2.0)  # in-place update (like an optimizer step or load_state_dict)
        second = model.pos_embed(1, 10, 12)
    assert second is not first
    torch.testing.assert_close(second, first * 2.0)
    with_grad = model.pos_embed(1, 10, 12)  # autograd on: never cached, differentiable
    assert with_grad.requires_grad and with_grad is not second


def test_outputs_are_views_in_nchw_shape():
    model = PVT("pvt_v2_b0").eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]


def test_out_indices_select_outputs_and_freeze_stages_that_never_run():
    model = PVT("pvt_v2_b0", out_indices=(1, 0))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 32]
    assert all(p.requires_grad for p in model.stage_parameters(1))
    assert not any(p.requires_grad for i in (2, 3) for p in model.stage_parameters(i))


@pytest.mark.parametrize("arch", ["pvt_v2_b0", "pvt_tiny"])
def test_checkpoint_activations_gives_equal_gradients(arch):
    torch.manual_seed(0)
    plain = PVT(arch, drop_path_rate=0.2)
    ckpt = PVT(arch, drop_path_rate=0.2, checkpoint_activations=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same stochastic-depth draws
        loss = sum((o.float() ** 2).mean() for o in model(x))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_v1_classifier_reads_the_cls_token():
    model = PVTClassifier("pvt_tiny", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.cls_token.add_(1.0)
        after = model(x)
    assert before.shape == (2, 10)
    assert not torch.allclose(before, after)


def test_v2_classifier_is_the_head_on_the_mean_of_stage4_post_norm_tokens():
    model = PVTClassifier("pvt_v2_b0", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        stage4 = PVT.forward(model, x)[0]  # post-norm stage-4 map
        expected = model.head(stage4.mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected)


def test_classifier_loads_authors_layout_strictly():
    source = PVTClassifier("pvt_v2_b0")
    authors = {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in source.state_dict().items()}
    target = PVTClassifier("pvt_v2_b0")
    target.load_state_dict(to_pvt_state_dict(authors, drop_classifier=False), strict=True)
    assert torch.equal(target.head.weight, source.head.weight)


@pytest.mark.parametrize("arch", ["pvt_v2_b0", "pvt_tiny"])
def test_stage_outputs_pass_a_contiguous_gradient_back_and_the_same_gradients(arch, monkeypatch):
    from pvt_d2.modeling import fast_ops

    torch.manual_seed(0)
    model = PVT(arch)
    x = torch.randn(2, 3, 64, 96)
    seen = []
    original = fast_ops.ContiguousGrad.backward

    def recording(ctx, grad):
        out = original(ctx, grad)
        seen.append((grad.is_contiguous(), out.is_contiguous()))
        return out

    def grads():
        model.zero_grad()
        sum((o.float() ** 2).mean() for o in model(x)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    monkeypatch.setattr(fast_ops.ContiguousGrad, "backward", staticmethod(recording))
    with_fix = grads()
    assert len(seen) == 4 and all(out for _, out in seen)
    assert not all(incoming for incoming, _ in seen)  # the NCHW loss gradient does arrive strided
    monkeypatch.setattr(fast_ops.ContiguousGrad, "apply", staticmethod(lambda t: t))
    without = grads()
    for name in with_fix:
        torch.testing.assert_close(with_fix[name], without[name], atol=1e-6, rtol=1e-5, msg=name)
