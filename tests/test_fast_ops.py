"""The speed and memory switches (pvt_d2.modeling.fast_ops), which must change nothing but speed and memory:
activation checkpointing, GELU recomputation, the banded FFN in training and inference, oneDNN inference, bf16
autocast, the attention's query split."""
import pytest
import torch

from pvt_d2.modeling import fast_ops
from pvt_d2.modeling.pvt import PVT, Mlp
from pvt_helpers import make_pvt, perturbed


def _switched_pair(arch, switch, **kwargs):
    """(plain, switched): the same weights (perturbed norms and biases), the speed/memory ``switch`` off and on."""
    plain = perturbed(make_pvt(arch, **{switch: False}, **kwargs))
    switched = make_pvt(arch, **{switch: True}, **kwargs)
    switched.load_state_dict(plain.state_dict())
    return plain, switched


def _saved_bytes(model, x):
    """Bytes of the activations autograd saves for the backward of one forward (distinct storages, parameters
    excluded)."""
    storages = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return sum(storages.values()), outs


def _grads(model, x, seed=1):
    torch.manual_seed(seed)  # same stochastic-depth draws
    loss = sum((o.float() ** 2).mean() for o in model(x))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_leaner_with_equal_gradients(plain, switched, x, most, atol, rtol):
    """The switched model saves under ``most`` times the plain model's activations and gets the same gradients."""
    saved_plain, _ = _saved_bytes(plain, x)
    saved_switched, _ = _saved_bytes(switched, x)
    assert saved_switched < most * saved_plain
    g_plain, g_switched = _grads(plain, x), _grads(switched, x)
    assert g_plain.keys() == g_switched.keys()
    for name in g_plain:
        torch.testing.assert_close(g_switched[name], g_plain[name], atol=atol, rtol=rtol, msg=name)


# ---- switches that change speed or memory only --------------------------------------------------------------------
# saved activations with recompute_gelu / without, measured: 0.68 (v1: the GELU's output not kept), 0.52 and 0.62
# (v2: the depthwise conv's output not kept either; 0.76 and 0.81 when only the GELU's output was dropped). On the
# CPU in fp32 the banded FFN (chunked_mlp_training) takes over, so it is off here.
@pytest.mark.parametrize("arch,most", [("pvt_tiny", 0.75), ("pvt_v2_b0", 0.6), ("tiny_li", 0.7)])
def test_recompute_gelu_gives_equal_gradients_and_saves_less(arch, most):
    torch.manual_seed(0)
    plain, lean = _switched_pair(arch, "recompute_gelu", drop_path_rate=0.2, chunked_mlp_training=False)
    _assert_leaner_with_equal_gradients(plain, lean, torch.randn(2, 3, 64, 96), most, atol=1e-7, rtol=1e-6)


def test_recompute_gelu_under_bf16_autocast_gives_equal_gradients():
    torch.manual_seed(0)
    plain, lean = _switched_pair("pvt_v2_b0", "recompute_gelu")
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum((o.float() ** 2).mean() for o in model(x))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        assert grads[1][name].dtype == torch.float32
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-3, msg=name)


# saved activations, banded FFN / recompute_gelu's formulation, measured: 0.52 (pvt_tiny), 0.55 (pvt_v2_b0), 0.64
# (tiny_li)
@pytest.mark.parametrize("arch,most", [("pvt_tiny", 0.6), ("pvt_v2_b0", 0.62), ("tiny_li", 0.72)])
def test_chunked_mlp_training_gives_equal_gradients_and_saves_less(arch, most, monkeypatch):
    monkeypatch.setattr(fast_ops, "_TRAIN_BAND_ELEMENTS", 40000)  # several bands per image, the last one shorter
    calls = []
    banded = fast_ops.BandedMlp.apply
    monkeypatch.setattr(fast_ops.BandedMlp, "apply", lambda *args: calls.append(1) or banded(*args))
    torch.manual_seed(0)
    plain, banded_model = _switched_pair(arch, "chunked_mlp_training", drop_path_rate=0.2)
    x = torch.randn(2, 3, 100, 132)  # odd grids: 25 x 33 tokens in stage 1
    _assert_leaner_with_equal_gradients(plain, banded_model, x, most, atol=1e-6, rtol=1e-5)
    assert len(calls) == 2 * sum(plain.spec.depths)  # every block's FFN, in both of the switched model's forwards


# under bf16 autocast, measured: saved activations 0.65 / 0.61 / 0.67 of the plain path's, gradient errors (relative
# to fp32) at most 0.007 above the plain bf16 path's
@pytest.mark.parametrize("arch,most", [("pvt_tiny", 0.7), ("pvt_v2_b0", 0.66), ("tiny_li", 0.72)])
def test_chunked_mlp_training_under_bf16_autocast_runs_in_bf16_as_accurately_and_saves_less(arch, most, monkeypatch):
    monkeypatch.setattr(fast_ops, "_TRAIN_BAND_ELEMENTS", 40000)
    dtypes = []
    banded = fast_ops.BandedMlp.apply
    monkeypatch.setattr(fast_ops.BandedMlp, "apply", lambda *args: dtypes.append(args[-1]) or banded(*args))
    torch.manual_seed(0)
    plain, banded_model = _switched_pair(arch, "chunked_mlp_training")
    x = torch.randn(2, 3, 100, 132)
    fp32 = _grads(plain, x)
    plain.zero_grad(set_to_none=True)
    assert not dtypes  # fp32 without the switch: the plain path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved_plain, _ = _saved_bytes(plain, x)
        saved_banded, _ = _saved_bytes(banded_model, x)
        g_plain, g_banded = _grads(plain, x), _grads(banded_model, x)
    assert saved_banded < most * saved_plain
    assert dtypes == [torch.bfloat16] * (2 * sum(plain.spec.depths))
    assert g_banded.keys() == fp32.keys()
    for name, ref in fp32.items():
        assert g_banded[name].dtype == torch.float32, name
        err_plain, err_banded = ((g[name] - ref).norm() / ref.norm() for g in (g_plain, g_banded))
        assert err_banded <= 1.25 * err_plain + 0.01, (name, err_banded, err_plain)


def test_chunked_mlp_training_gives_weight_gradients_for_an_input_without_one_and_none_to_frozen_ones():
    mlp = Mlp(16, 64, dwconv=True, chunked_training=True)
    x = torch.randn(2, 5 * 7, 16)
    mlp(x, 5, 7).square().sum().backward()
    banded = {n: p.grad.clone() for n, p in mlp.named_parameters()}
    mlp.chunked_training = False
    mlp.zero_grad()
    mlp(x, 5, 7).square().sum().backward()
    for name, p in mlp.named_parameters():
        torch.testing.assert_close(banded[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
    mlp.chunked_training = True  # a frozen fc1 gets no gradient
    mlp.zero_grad(set_to_none=True)
    mlp.fc1.requires_grad_(False)
    mlp(x, 5, 7).square().sum().backward()
    assert mlp.fc1.weight.grad is None and mlp.fc2.weight.grad is not None


def test_training_attention_splits_queries_across_threads_with_the_same_outputs_and_gradients(monkeypatch):
    """With fewer (image, head) pairs than threads, CPU training runs attention with the queries split into more
    heads (PyTorch's CPU attention backward runs one thread per pair); outputs and gradients stay the same."""
    torch.manual_seed(0)
    model = perturbed(make_pvt("pvt_v2_b0"))
    x = torch.randn(1, 3, 100, 132)  # stage 1: 25 x 33 = 825 tokens, not a multiple of the split: padded queries
    heads = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v: heads.append(q.shape[1]) or sdpa(q, k, v))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    expected_out = [o.detach() for o in model(x)]
    expected = _grads(model, x)
    assert heads[:2] == [1, 1]  # one thread: nothing to split
    heads.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    model.zero_grad(set_to_none=True)
    got = _grads(model, x)
    assert heads[:2] == [4, 4]  # stage 1 (1 head) split in 4
    for a, b in zip(model(x), expected_out):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)
    heads.clear()
    with torch.no_grad():  # inference: the forward already uses every thread
        model(x)
    assert heads[:2] == [1, 1]


@pytest.mark.parametrize("arch", ["pvt_tiny", "pvt_v2_b0"])
def test_checkpoint_activations_gives_equal_gradients_and_saves_less(arch):
    torch.manual_seed(0)
    plain, ckpt = _switched_pair(arch, "checkpoint_activations", drop_path_rate=0.2)
    _assert_leaner_with_equal_gradients(plain, ckpt, torch.randn(2, 3, 64, 96), 0.5, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["pvt_tiny", "pvt_v2_b0", "tiny_li"])
def test_onednn_inference_gives_the_same_outputs(arch, monkeypatch):
    if fast_ops._ONEDNN_LINEAR is None:
        pytest.skip("this PyTorch has no oneDNN fused linear")
    calls = []
    fused = fast_ops._ONEDNN_LINEAR

    def counting(*args):
        calls.append(args[3])
        return fused(*args)

    monkeypatch.setattr(fast_ops, "_ONEDNN_LINEAR", counting)
    torch.manual_seed(0)
    plain, fast = (m.eval() for m in _switched_pair(arch, "onednn_inference"))
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = plain(x), fast(x)
    assert len(calls) == 5 * sum(plain.spec.depths)  # q, kv, proj, fc1, fc2 of every block
    assert ("gelu" in calls) == (plain.version == 1)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # with autograd the plain path runs: outputs carry gradients
        assert all(o.requires_grad for o in fast(x))


@pytest.mark.parametrize("arch", ["pvt_tiny", "pvt_v2_b0"])
def test_onednn_inference_under_bf16_autocast_runs_in_bf16_with_the_same_outputs(arch, monkeypatch):
    if fast_ops._ONEDNN_LINEAR is None:
        pytest.skip("this PyTorch has no oneDNN fused linear")
    dtypes = []
    fused = fast_ops._ONEDNN_LINEAR

    def recording(x, *args):
        dtypes.append(x.dtype)
        return fused(x, *args)

    monkeypatch.setattr(fast_ops, "_ONEDNN_LINEAR", recording)
    torch.manual_seed(0)
    plain, fast = (perturbed(m).eval() for m in _switched_pair(arch, "onednn_inference"))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        fp32 = plain(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected, got = plain(x), fast(x)
    assert dtypes == [torch.bfloat16] * (5 * sum(plain.spec.depths))  # q, kv, proj, fc1, fc2 of every block
    for a, b, f in zip(got, expected, fp32):
        assert a.dtype == b.dtype
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 0.01  # bf16 rounding differs slightly
        assert ((a.float() - f).norm() / f.norm()).item() < 0.02


@pytest.mark.parametrize("arch", ["pvt_tiny", "pvt_v2_b0", "tiny_li"])
def test_chunked_mlp_inference_gives_the_same_outputs(arch, monkeypatch):
    monkeypatch.setattr(fast_ops, "_MLP_BAND_ELEMENTS", 70000)  # stage 1-2: 2-row bands, the last one shorter
    plain, chunked = (m.eval() for m in _switched_pair(arch, "chunked_mlp_inference"))
    x = torch.randn(2, 3, 100, 132)
    with torch.no_grad():
        for a, b in zip(chunked(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    chunked.train()  # training is unchanged: gradients still reach every FFN parameter
    sum(o.square().mean() for o in chunked(x)).backward()
    assert chunked.block1[0].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize("arch", ["pvt_tiny", "pvt_v2_b0"])
def test_bf16_autocast_stage_outputs_within_2_percent(arch):
    model = perturbed(PVT(arch)).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    for a, b in zip(bf16, fp32):
        assert a.dtype in (torch.bfloat16, torch.float32)  # v1's residual sums stay fp32
        assert ((a.float() - b).norm() / b.norm()).item() < 0.02


def test_inference_gelu_in_place_leaves_inputs_alone():
    model = PVT("pvt_v2_b0").eval()
    x = torch.randn(1, 3, 64, 64)
    before = x.clone()
    with torch.no_grad():
        first = [o.clone() for o in model(x)]
        second = model(x)
    assert torch.equal(x, before)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
