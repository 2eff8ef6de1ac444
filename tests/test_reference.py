"""pvt_d2.reference: the authors' unfused formulation and timm's pvt_v2 on our parameters, as the benchmark's
``--reference`` measures them."""
import pytest
import torch

from pvt_d2.modeling.pvt import PVT
from pvt_d2.reference import UnfusedPVT, reference_backbone
from pvt_helpers import make_pvt, perturbed


@pytest.mark.parametrize("arch, size", [("pvt_tiny", (96, 128)), ("pvt_v2_b0", (100, 130)), ("tiny_li", (64, 96))])
def test_unfused_reference_matches_pvt_on_the_same_parameters(arch, size):
    model = perturbed(make_pvt(arch)).eval()
    ref = UnfusedPVT(model).eval()
    assert {id(p) for p in ref.parameters()} == {id(p) for p in model.parameters()}
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            assert b.is_contiguous()
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_v2_reference_is_timm_sharing_our_tensors():
    pytest.importorskip("timm")
    model = perturbed(PVT("pvt_v2_b0")).eval()
    ref, desc = reference_backbone(model)
    assert "timm" in desc
    ours = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in ref.parameters()} == ours  # shared, not copied
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(model(x), ref.eval()(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_v1_reference_is_the_unfused_formulation():
    _, desc = reference_backbone(PVT("pvt_tiny"))
    assert "unfused" in desc
    with pytest.raises(ValueError, match="timm has no equivalent of pvt_tiny.*--reference-kind unfused"):
        reference_backbone(PVT("pvt_tiny"), kind="timm")


def test_v2_reference_kind_unfused_is_the_authors_formulation():
    model = PVT("pvt_v2_b0")
    ref, desc = reference_backbone(model, kind="unfused")
    assert isinstance(ref, UnfusedPVT) and "authors' formulation" in desc
    with pytest.raises(ValueError, match="reference kind 'fused' is not one of"):
        reference_backbone(model, kind="fused")
