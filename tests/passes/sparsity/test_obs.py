"""OBS / SparseGPT reconstruction (passes/sparsity/obs.py, hessian.py, reconstruct.py): closed forms,
brute force on tiny layers, the dampening rule, 2:4 validity, the sparse-conv Hessian, and the plan's
weights file through apply_torch and apply_onnx."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.config import SparsityConfig, parse_spec
from sparsefuse.passes.sparsity.discover import PrunableLayer
from sparsefuse.passes.sparsity.hessian import collect_hessians, conv2d_rows
from sparsefuse.passes.sparsity.obs import (
    ObsLayer,
    dampen,
    inverse_cholesky,
    obs_remove,
    reconstruction_error,
    sparsegpt,
)
from sparsefuse.passes.sparsity.patterns import nm_mask, nm_satisfied, unstructured_mask

TINY_DAMP = 1e-12  # closed-form tests: dampening negligible against the float64 tolerance


def _correlated(n: int, d: int, seed: int) -> torch.Tensor:
    """Rows [n, d] of strongly correlated inputs (a random mixing of i.i.d. normals, plus a mean)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z @ torch.randn(d, d, generator=gen, dtype=torch.float64) + 0.5


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x.T @ x / x.shape[0]


def _lstsq_refit(x: torch.Tensor, w: torch.Tensor, keep: list[int], fixed: dict[int, float]) -> np.ndarray:
    """argmin over w'[keep] of ‖X w' − X w‖² with w'[j] = fixed[j] elsewhere (numpy lstsq)."""
    xn, target = x.numpy(), (x @ w).numpy()
    rest = np.zeros(w.numel())
    for j, v in fixed.items():
        rest[j] = v
    sol = np.linalg.lstsq(xn[:, keep], target - xn @ rest, rcond=None)[0]
    out = rest.copy()
    out[keep] = sol
    return out


def test_obs_step_is_the_least_squares_optimum_with_the_weight_fixed_to_zero():
    x = _correlated(400, 6, seed=1)
    w = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = _hessian(x)
    hinv = torch.linalg.inv(h)
    for q in range(6):
        new, saliency = obs_remove(w, hinv, q)
        want = _lstsq_refit(x, w, [j for j in range(6) if j != q], {q: 0.0})
        np.testing.assert_allclose(new.numpy(), want, rtol=1e-8, atol=1e-9)
        # The saliency is exactly the error the refit leaves: (w'−w) H (w'−w)ᵀ.
        assert saliency == pytest.approx(reconstruction_error(w[None], new[None], h), rel=1e-8)


def test_single_weight_greedy_choice_is_optimal_by_brute_force():
    x = _correlated(300, 5, seed=3)
    h = _hessian(x)
    hinv = torch.linalg.inv(h)
    for seed in range(5):
        w = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        errors = []
        for q in range(5):  # every one-weight mask, refit by least squares
            refit = torch.from_numpy(_lstsq_refit(x, w, [j for j in range(5) if j != q], {q: 0.0}))
            errors.append(reconstruction_error(w[None], refit[None], h))
        saliency = (w**2 / torch.diagonal(hinv)).numpy()
        assert int(np.argmin(saliency)) == int(np.argmin(errors))
        np.testing.assert_allclose(saliency, errors, rtol=1e-8)


def test_lazy_batch_operator_equals_sequential_obs_with_frozen_prefix():
    """SparseGPT semantics: removing column q refits only the columns after q. With q the first column
    that is the global least-squares optimum; across 3 blocks of 4 the lazy updates must match a
    column-by-column reference refit by lstsq."""
    x = _correlated(500, 12, seed=4)
    h = _hessian(x)
    up, _ = inverse_cholesky(h, TINY_DAMP)
    w = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    first = torch.zeros(3, 12, dtype=torch.bool)
    first[:, 0] = True
    got, removed = sparsegpt(w, up, "mask", mask=first, block=4)
    assert torch.equal(removed, first)
    for r in range(3):
        want = _lstsq_refit(x, w[r], list(range(1, 12)), {0: 0.0})
        np.testing.assert_allclose(got[r].numpy(), want, rtol=1e-6, atol=1e-7)

    mask = torch.rand(3, 12, generator=torch.Generator().manual_seed(6)) < 0.5
    got, _ = sparsegpt(w, up, "mask", mask=mask, block=4)
    for r in range(3):
        cur = w[r].clone()
        for q in range(12):
            if mask[r, q]:
                fixed = {j: float(cur[j]) for j in range(q)} | {q: 0.0}
                cur = torch.from_numpy(_lstsq_refit(x, cur, list(range(q + 1, 12)), fixed))
        np.testing.assert_allclose(got[r].numpy(), cur.numpy(), rtol=1e-6, atol=1e-7)


def test_2to4_on_one_row_against_all_six_masks():
    x = _correlated(300, 4, seed=7)
    h = _hessian(x)
    up, _ = inverse_cholesky(h, TINY_DAMP)
    w = torch.tensor([[0.9, -1.1, 0.4, 1.0]], dtype=torch.float64)
    got, removed = sparsegpt(w, up, "2:4", block=4)
    assert int(removed.sum()) == 2 and torch.equal(got == 0, removed)
    error = reconstruction_error(w, got, h)
    brute = {}
    for pruned in itertools.combinations(range(4), 2):
        keep = [j for j in range(4) if j not in pruned]
        refit = torch.from_numpy(_lstsq_refit(x, w[0], keep, dict.fromkeys(pruned, 0.0)))
        brute[pruned] = reconstruction_error(w, refit[None], h)
    best = min(brute.values())
    # One group = the whole row: the joint OBS choice over the group is the brute-force optimum.
    assert error == pytest.approx(best, rel=1e-6)
    assert sorted(brute.values())[1] > best * (1 + 1e-3)  # and the optimum is unique (a real choice)
    magnitude = w * nm_mask(w, 1)
    assert error < reconstruction_error(w, magnitude, h)


@pytest.mark.parametrize("pattern, level", [("unstructured", 0.5), ("unstructured", 0.75), ("2:4", 0.5)])
def test_reconstruction_beats_magnitude_masking_on_correlated_inputs(pattern, level):
    gen = torch.Generator().manual_seed(8)
    mix = torch.randn(8, 8, 3, 3, generator=gen)
    images = torch.relu(F.conv2d(torch.randn(4, 8, 12, 12, generator=gen), mix))
    rows = conv2d_rows(images, (16, 8, 3, 3), 1, 1, 1).double()
    weight = torch.randn(16, 8, 3, 3, generator=gen)
    layer = ObsLayer.build((16, 8, 3, 3), 1, _hessian(rows), 0.01)
    new = layer.prune(weight, pattern, level)
    masked = weight * (unstructured_mask(weight, level) if pattern == "unstructured" else nm_mask(weight, 1))
    assert int((new == 0).sum()) == int((masked == 0).sum())

    def output_error(w: torch.Tensor) -> float:
        return float(((rows @ (w - weight).double().reshape(16, -1).T) ** 2).sum())

    assert output_error(new) < 0.9 * output_error(masked)


def test_dampening_rule_on_a_singular_hessian_with_a_dead_input():
    x = _correlated(200, 5, seed=9)
    x[:, 2] = 0.0  # a dead input: H's row and column 2 are zero, H is singular
    h = _hessian(x)
    assert torch.linalg.matrix_rank(h) == 4
    damped, lam = dampen(h, 0.01)
    live = torch.diagonal(h)[[0, 1, 3, 4]]
    assert lam == pytest.approx(0.01 * float(live.mean()))
    assert float(damped[2, 2]) == pytest.approx(lam)
    torch.testing.assert_close(damped - h, lam * torch.eye(5, dtype=h.dtype), rtol=0, atol=1e-12)
    assert dampen(torch.zeros(3, 3), 0.05)[1] == pytest.approx(0.05)  # nothing live: λ = percdamp · 1
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(h)
    up, _ = inverse_cholesky(h, 0.01)
    w = torch.randn(2, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 0] = True
    got, _ = sparsegpt(w, up, "mask", mask=mask, block=4)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:, 2], w[:, 2])  # decoupled: the dead weight is not updated
    # The damped objective is the ridge ‖XΔw‖²·2/N + λ‖Δw‖²: its closed form is the result.
    hinv = torch.linalg.inv(damped)
    for r in range(2):
        want, _ = obs_remove(w[r], hinv, 0)
        torch.testing.assert_close(got[r], want, rtol=1e-10, atol=1e-12)


def test_2to4_output_satisfies_nm_for_conv_and_sparse_conv_layouts():
    gen = torch.Generator().manual_seed(11)
    for shape, in_axis in (((8, 8, 3, 3), 1), ((8, 3, 3, 3, 8), 4), ((6, 12), 1)):
        d = int(np.prod(shape[1:]))
        x = torch.randn(4 * d, d, generator=gen, dtype=torch.float64)
        weight = torch.randn(*shape, generator=gen)
        new = ObsLayer.build(shape, in_axis, _hessian(x), 0.01).prune(weight, "2:4", 0.5, block=8)
        assert nm_satisfied(new, in_axis)
        assert int((new == 0).sum()) == weight.numel() // 2


class _DenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(self.conv(x))
        return self.fc(y.permute(0, 2, 3, 1))  # linear over [B, H, W, C]: every (b, h, w) is a row


def test_dense_hessians_from_the_calls_reproduce_the_layer_outputs():
    from sparsefuse.passes.sparsity.discover import discover_layers
    from sparsefuse.passes.sparsity.hessian import obs_supported

    torch.manual_seed(15)
    net = _DenseNet().eval()
    frames = [torch.randn(2, 3, 9, 7), torch.randn(1, 3, 9, 7)]
    layers, _ = discover_layers(net, frames, lambda m, f: m(f))
    assert {la.name: obs_supported(la) for la in layers} == {
        "conv.weight": True, "grouped.weight": False, "fc.weight": True
    }
    got = collect_hessians(net, frames, lambda m, f: m(f), layers)
    assert set(got) == {"conv.weight", "fc.weight"}  # the grouped conv keeps magnitude masking
    conv_rows = torch.cat([conv2d_rows(f, (4, 3, 3, 3), 2, 1, 1) for f in frames]).double()
    torch.testing.assert_close(got["conv.weight"], _hessian(conv_rows), rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the rows are the conv's im2col: rows @ W_flatᵀ is its output
        out = net.conv(frames[0])
    flat = conv2d_rows(frames[0], (4, 3, 3, 3), 2, 1, 1) @ net.conv.weight.reshape(4, -1).T
    want = out.permute(0, 2, 3, 1).reshape(-1, 4) - net.conv.bias
    torch.testing.assert_close(flat, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        fc_rows = torch.cat([net.grouped(net.conv(f)).permute(0, 2, 3, 1).reshape(-1, 4) for f in frames])
    torch.testing.assert_close(got["fc.weight"], _hessian(fc_rows.double()), rtol=1e-10, atol=1e-12)


class _SparseNet(nn.Module):
    def __init__(self, spatial: tuple[int, int, int], stride: int, subm: bool) -> None:
        super().__init__()
        from sparsefuse.models.bevfusion.lidar import SparseConv3d

        self.conv = SparseConv3d(3, 4, spatial, 3, stride=stride, padding=1, subm=subm, activation="none")
        torch.manual_seed(0)
        self.conv.reset_parameters()  # the weight starts as torch.empty

    def forward(self, features: torch.Tensor, coords: torch.Tensor):
        return self.conv(features, coords)


@pytest.mark.parametrize("stride, subm", [(1, True), (2, False)])
def test_sparse_conv_hessian_equals_dense_conv_when_every_site_is_active(stride, subm):
    import sparsefuse.plugins.sparse_conv3d  # noqa: F401  (registers the op)

    spatial = (3, 4, 5)
    zz, yy, xx = torch.meshgrid(*(torch.arange(s) for s in spatial), indexing="ij")
    coords = torch.stack([torch.zeros_like(zz), zz, yy, xx], dim=-1).reshape(-1, 4).to(torch.int32)
    feats = torch.randn(coords.shape[0], 3, generator=torch.Generator().manual_seed(12))
    net = _SparseNet(spatial, stride, subm).eval()
    layer = PrunableLayer(
        "conv.weight", "sparseconv3d", "lidar", (4, 3, 3, 3, 3), 324, 0.0, 1, False, False, ""
    )
    got = collect_hessians(net, [(feats, coords)], lambda m, f: m(*f), [layer])["conv.weight"]

    dense = feats.double().T.reshape(1, 3, *spatial)  # rows are in (z, y, x) order
    patches = F.pad(dense, (1, 1, 1, 1, 1, 1)).unfold(2, 3, stride).unfold(3, 3, stride).unfold(4, 3, stride)
    # [1, Cin, Z', Y', X', kz, ky, kx] -> rows ordered like the weight: (kz, ky, kx, Cin)
    rows = patches.permute(0, 2, 3, 4, 5, 6, 7, 1).reshape(-1, 27 * 3)
    torch.testing.assert_close(got, _hessian(rows), rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # and the rows reproduce the op's output
        out, _ = net(feats, coords)
    torch.testing.assert_close(
        out.double(), rows @ net.conv.weight.double().reshape(4, -1).T, rtol=1e-5, atol=1e-5
    )


def test_channel_order_greedy_choice_is_brute_force_optimal_on_the_consumer():
    """Channel decisions are made on the consumer: the first channel of the greedy order is the one
    whose removal, with the consumer's other inputs refit by least squares, costs least."""
    x = _correlated(300, 6, seed=13)
    h = _hessian(x)
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    layer = ObsLayer.build((4, 6), 1, h, TINY_DAMP)
    order = layer.input_order(weight, torch.zeros(6, dtype=torch.bool))
    assert len(order) == 5 and len(set(order)) == 5  # all channels but one, no repeats
    costs = []
    for c in range(6):
        keep = [j for j in range(6) if j != c]
        refit = torch.stack([torch.from_numpy(_lstsq_refit(x, weight[r], keep, {c: 0.0})) for r in range(4)])
        costs.append(reconstruction_error(weight, refit, h))
    assert order[0] == int(np.argmin(costs))
    assert sorted(costs)[1] > min(costs) * 1.01  # a real choice
    # A producer filter that is already all zero goes first, in index order.
    first = torch.zeros(6, dtype=torch.bool)
    first[[4, 1]] = True
    assert layer.input_order(weight, first)[:2] == [1, 4]


def test_consumer_refit_is_the_least_squares_optimum_without_the_removed_channels():
    x = _correlated(300, 6, seed=16)
    weight = torch.randn(3, 6, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    layer = ObsLayer.build((3, 6), 1, _hessian(x), TINY_DAMP)
    removed = torch.tensor([False, True, False, False, True, False])
    new = layer.remove_inputs(weight, removed)
    keep = [0, 2, 3, 5]
    for r in range(3):
        want = _lstsq_refit(x, weight[r], keep, {1: 0.0, 4: 0.0})
        np.testing.assert_allclose(new[r].numpy(), want, rtol=1e-6, atol=1e-7)
    # conv layout: channel c is every (r, s) column of input channel c
    conv = ObsLayer.build((2, 4, 3, 3), 1, _hessian(_correlated(400, 36, seed=18)), 0.01)
    w = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(19))
    out = conv.remove_inputs(w, torch.tensor([False, False, True, False]))
    assert torch.equal(out[:, 2], torch.zeros(2, 3, 3))
    assert not torch.equal(out[:, [0, 1, 3]], w[:, [0, 1, 3]])


def test_channel_plan_refits_the_consumer_and_round_trips(model, frames, tmp_path):
    from sparsefuse.passes.sparsity.apply_torch import apply_plan_torch, thin_model
    from sparsefuse.passes.sparsity.plan import read_plan
    from sparsefuse.passes.sparsity.stage import run_sparsity_stage

    config = SparsityConfig(
        budget=0.9, calib=1, levels=3, pattern="channel", allocator="uniform", operator="obs"
    )
    pruned, _, plan = run_sparsity_stage(model, None, config, tmp_path / "sparsity", frames)
    chained = [la for la in plan.layers if la.level > 0 and la.channel and "consumer" in la.channel]
    assert chained
    dense = dict(model.named_parameters())
    params = dict(pruned.named_parameters())
    for la in chained:
        consumer = la.channel["consumer"]
        axis = la.channel["tensors"][consumer]
        removed = params[la.name].detach().movedim(la.out_axis, 0).flatten(1).abs().sum(1) == 0
        cw = params[consumer].detach().movedim(axis, 0)
        assert int(removed.sum()) == round(la.level * removed.numel())
        assert bool((cw[removed] == 0).all())  # the consumer no longer reads the removed channels
        assert not torch.equal(cw[~removed], dense[consumer].detach().movedim(axis, 0)[~removed])  # refit
    fresh = type(model)()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    apply_plan_torch(fresh, read_plan(tmp_path / "sparsity" / "plan.json"))
    for name, p in fresh.named_parameters():
        torch.testing.assert_close(p, params[name], rtol=0, atol=0)
    with torch.no_grad():
        thin = thin_model(model, plan).eval()
        for got, want in zip(thin(**frames[2]), pruned(**frames[2]), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_operator_option_and_spec_parsing():
    assert SparsityConfig().operator == "magnitude"
    assert parse_spec("budget=params=0.25,operator=obs,obs_percdamp=0.05").operator == "obs"
    assert parse_spec("operator=obs,obs_percdamp=0.05").obs_percdamp == 0.05
    with pytest.raises(SparsefuseError, match="unknown operator"):
        SparsityConfig(operator="sparsegpt")
    with pytest.raises(SparsefuseError):
        SparsityConfig(operator="obs", obs_percdamp=0.0)
    with pytest.raises(SparsefuseError):
        SparsityConfig(operator="obs", obs_block=6)


def _ort_outputs(proto, frame):
    import onnxruntime as ort

    from sparsefuse.plugins.onnx_ops import attach_functions

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        attach_functions(proto).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"images": frame["images"].numpy(), "points": frame["points"].numpy()})


def test_obs_plan_weights_round_trip_through_torch_and_onnx(model, frames, tmp_path):
    from onnx import numpy_helper

    from sparsefuse.passes.export import export_model
    from sparsefuse.passes.sparsity.apply_onnx import apply_plan_onnx
    from sparsefuse.passes.sparsity.apply_torch import apply_plan_torch
    from sparsefuse.passes.sparsity.plan import read_plan
    from sparsefuse.passes.sparsity.stage import run_sparsity_stage

    proto = export_model(model, frames[0])
    config = SparsityConfig(budget=0.5, calib=1, levels=3, allocator="rdprune", operator="obs")
    out = tmp_path / "sparsity"
    pruned, pruned_onnx, plan = run_sparsity_stage(model, proto, config, out, frames)
    saved = json.loads((out / "plan.json").read_text())
    assert saved["weights_file"] == "weights.safetensors" and "reconstructed" not in saved
    assert (out / "weights.safetensors").stat().st_size > 0

    reread = read_plan(out / "plan.json")
    assert reread.reconstructed and set(reread.reconstructed) == set(plan.reconstructed)
    dense = dict(model.named_parameters())
    changed = [
        n for n, w in reread.reconstructed.items()
        if not torch.equal(w, dense[n].detach() * (w != 0))  # survivors moved: not a pure mask
    ]
    assert changed
    fresh = type(model)()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    apply_plan_torch(fresh, reread)
    for name, p in fresh.named_parameters():
        torch.testing.assert_close(p, dict(pruned.named_parameters())[name], rtol=0, atol=0)
    for name, w in reread.reconstructed.items():
        torch.testing.assert_close(dict(fresh.named_parameters())[name].detach(), w, rtol=0, atol=0)

    onnx_again = apply_plan_onnx(proto, reread)
    stage_inits = {i.name: numpy_helper.to_array(i) for i in pruned_onnx.graph.initializer}
    for init in onnx_again.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), stage_inits[init.name])
    frame = frames[2]
    with torch.no_grad():
        ref = fresh(**frame)
    for got, want in zip(_ort_outputs(onnx_again, frame), ref, strict=True):
        atol = 1e-4 * float(want.abs().max()) + 1e-5
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=atol)

    (out / "weights.safetensors").unlink()
    with pytest.raises(SparsefuseError, match="weights"):
        read_plan(out / "plan.json")


def test_prune_cli_operator_obs_writes_the_weights_file(monkeypatch, model, frames, tmp_path, capsys):
    from types import SimpleNamespace

    from sparsefuse.compiler import cli
    from sparsefuse.compiler.commands import prune

    no_transforms = SimpleNamespace(outputs=())
    monkeypatch.setattr(prune, "_load", lambda args, count: (model, frames[:count], None, no_transforms))
    args = "prune --model toy --budget params=0.5 --allocator rdprune --calib 1 --levels 2 --out".split()
    assert cli.main([*args, str(tmp_path / "o"), "--operator", "obs", "--obs-percdamp", "0.02"]) == 0
    plan = json.loads((tmp_path / "o" / "sparsity" / "plan.json").read_text())
    assert plan["weights_file"] == "weights.safetensors" and plan["config"]["operator"] == "obs"
    assert plan["config"]["obs_percdamp"] == 0.02
    assert (tmp_path / "o" / "sparsity" / "weights.safetensors").is_file()
    capsys.readouterr()
    assert cli.main([*args, str(tmp_path / "x"), "--operator", "sparsegpt"]) != 0
    err = capsys.readouterr().err
    assert "unknown operator" in err and "Traceback" not in err


def test_sensitivity_is_measured_with_the_reconstructed_weights(model, frames):
    import copy

    from sparsefuse.passes.sparsity.analysis import analyze
    from sparsefuse.passes.sparsity.calib import default_forward
    from sparsefuse.passes.sparsity.sensitivity import frame_distortion, output_variances

    obs = analyze(model, frames[:1], "unstructured", levels=3, operator="obs")
    mag = analyze(model, frames[:1], "unstructured", levels=3)
    assert obs.operator is not None and mag.operator is None
    with torch.no_grad():
        dense = default_forward(model, frames[0])
    variances = output_variances([dense])
    checked = 0
    for i, layer in enumerate(obs.layers):
        if not obs.operator.supports(layer.name):
            continue
        cand = obs.candidates[i][1]  # level 0.5
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            p = pruned.get_parameter(layer.name)
            p.copy_(obs.operator.weight(layer, p.detach(), cand))
            want = frame_distortion(dense, default_forward(pruned, frames[0]), variances)
        assert obs.distortion()[i][1] == pytest.approx(want, rel=1e-6, abs=1e-12), layer.name
        checked += 1
    assert checked == len(obs.layers)  # every toy layer (conv2d, sparse conv) is reconstructed
    assert sum(r[1] for r in obs.distortion()) < sum(r[1] for r in mag.distortion())
