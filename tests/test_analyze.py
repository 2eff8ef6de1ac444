"""python -m pvt_d2.analyze: parameter and FLOP tables, with fused attention counted."""
import glob
import os

import pytest
import torch

from pvt_d2.analyze import backbone_gflops, main, sdpa_flop_handle
from pvt_helpers import ROOT

# ../shared/PVT_FACTS.md §3: backbone GFLOPs at 224x224, attention matmuls included.
PAPER_GFLOPS = dict(pvt_tiny=1.94, pvt_small=3.83, pvt_medium=6.69, pvt_large=9.85, pvt_v2_b0=0.57, pvt_v2_b1=2.12,
                    pvt_v2_b2_li=3.91, pvt_v2_b2=4.05, pvt_v2_b3=6.92, pvt_v2_b4=10.14, pvt_v2_b5=11.76)
FAST = ("pvt_tiny", "pvt_v2_b0", "pvt_v2_b2_li")


@pytest.mark.parametrize("arch", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in PAPER_GFLOPS])
def test_backbone_gflops_match_the_paper(arch):
    assert backbone_gflops(arch) == pytest.approx(PAPER_GFLOPS[arch], rel=0.02)


def test_attention_flops_are_counted():
    from fvcore.nn import FlopCountAnalysis

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.zeros(2, 3, 10, 8), torch.zeros(2, 3, 5, 8), torch.zeros(2, 3, 5, 4)
    flops = FlopCountAnalysis(Attn(), (q, k, v)).set_op_handle(
        **{"aten::scaled_dot_product_attention": sdpa_flop_handle}).total()
    assert flops == 2 * 3 * 10 * 5 * (8 + 4)


def test_analyze_cli_prints_tables_and_summary(capsys):
    assert main(["--config-file", os.path.join(ROOT, "configs/Synthetic/mask_rcnn_pvt_v2_b0_shapes.yaml"),
                 "--tasks", "parameter", "flop", "--size", "128", "160"]) == 0
    out = capsys.readouterr().out
    assert "backbone.bottom_up" in out and "#parameters" in out and "#flops" in out


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.relpath(c, ROOT) for c in CONFIGS])
def test_analyze_runs_on_every_config(config):
    assert main(["--config-file", config, "--tasks", "parameter", "flop", "--model", "backbone", "--size", "64",
                 "64", "MODEL.WEIGHTS", ""]) == 0
