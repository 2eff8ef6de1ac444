"""Helpers shared by the test files: the repository root and small PVT models."""
import os

import torch

from pvt_d2.modeling.pvt import PVT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def make_pvt(arch, **kwargs):
    """A PVT variant; "tiny_li" is a one-block-per-stage linear-SRA v2 (pvt_v2_b2_li's design, fast to run)."""
    if arch == "tiny_li":
        return PVT(None, version=2, depths=(1, 1, 1, 1), embed_dims=(32, 64, 160, 256), linear=True, **kwargs)
    return PVT(arch, **kwargs)


def perturbed(model):
    """Non-trivial norms and biases, so that every parameter shows in the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model
