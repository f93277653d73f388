"""Sensitivity: cached-suffix δ equals full-forward δ; fewer forwards; MMPrune4U regularizer."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefuse.passes.sparsity.analysis import analyze
from sparsefuse.passes.sparsity.config import SparsityConfig
from sparsefuse.passes.sparsity.decide import decide
from sparsefuse.passes.sparsity.regularizer import ChannelStats, log_sobolev_bound, relative_fisher


def test_cached_suffix_equals_full_forward(model, frames):
    cached = analyze(model, frames[:2], "unstructured", levels=3)
    full = analyze(model, frames[:2], "unstructured", levels=3, use_cache=False)
    np.testing.assert_allclose(
        np.array(cached.distortion()), np.array(full.distortion()), rtol=1e-9, atol=1e-12
    )
    assert all(row[-1] > 0 for row in cached.distortion())  # every layer matters when fully pruned
    c, f = cached.sensitivity.forward_counts, full.sensitivity.forward_counts
    assert c["module_calls_reused"] > 0 and f["module_calls_reused"] == 0
    assert c["equivalent_full_forwards"] < 0.7 * f["equivalent_full_forwards"]
    assert c["naive_full_forwards"] == sum(len(x) for x in cached.candidates) * 2
    # λ: a camera layer moves the camera site only, never the LiDAR site
    names = [layer.name for layer in cached.layers]
    cam = cached.site_lambda[names.index("camera.stem.0.weight")][-1]
    assert cam["camera_bev"] > 0 and cam["lidar_bev"] == 0
    lid = cached.site_lambda[names.index("lidar.conv1.weight")][-1]
    assert lid["lidar_bev"] > 0 and lid["camera_bev"] == 0
    # per-modality weights reach the sites of that modality
    i = names.index("camera.stem.0.weight")
    plain, no_cam = cached.lam({})[i][-1], cached.lam({"camera": 0.0})[i][-1]
    assert no_cam == pytest.approx(plain - cam["camera_bev"]) and no_cam < plain
    assert cached.lam({"lidar": 3.0})[names.index("lidar.conv1.weight")][-1] == pytest.approx(
        3.0 * lid["lidar_bev"] + lid["fused_bev"]
    )

    # β = 0 reproduces plain RD-Prune exactly
    weights = dict(model.named_parameters())
    a = decide(cached, weights, SparsityConfig(allocator="mmprune4u", beta=0.0, budget=0.4))
    b = decide(cached, weights, SparsityConfig(allocator="rdprune", beta=3.0, budget=0.4))
    assert a.candidates == b.candidates
    c3 = decide(cached, weights, SparsityConfig(allocator="mmprune4u", beta=50.0, budget=0.4))
    assert c3.candidates != b.candidates  # a strong regularizer changes the allocation


def _stats(mu, var):
    return ChannelStats(np.array([mu]), np.array([var]), 1)


@pytest.mark.parametrize("mt,vt,mp,vp", [(0.0, 1.0, 0.5, 2.0), (1.0, 0.5, -0.3, 0.2), (2.0, 3.0, 2.0, 3.0)])
def test_relative_fisher_closed_form_and_log_sobolev_bound(mt, vt, mp, vp):
    t, p = _stats(mt, vt), _stats(mp, vp)
    x = np.random.default_rng(0).normal(mp, np.sqrt(vp), 400_000)
    score = -(x - mp) / vp + (x - mt) / vt  # ∂x log p/t
    assert relative_fisher(t, p)[0] == pytest.approx(np.mean(score**2), rel=2e-2, abs=1e-9)
    kl = 0.5 * (np.log(vt / vp) + (vp + (mp - mt) ** 2) / vt - 1.0)
    assert log_sobolev_bound(t, p) >= kl - 1e-12
    if (mt, vt) == (mp, vp):
        assert log_sobolev_bound(t, p) == 0.0


def test_synthetic_frames_keep_shapes_and_ranges(frames):
    from sparsefuse.passes.sparsity.calib import synthetic_frames

    fake = synthetic_frames(frames[0], 2, seed=3)
    assert len(fake) == 2 and not np.array_equal(fake[0]["points"].numpy(), fake[1]["points"].numpy())
    for key in ("images", "points"):
        real = frames[0][key]
        assert fake[0][key].shape == real.shape
        lo = real.reshape(-1, real.shape[-1]).min(dim=0).values
        hi = real.reshape(-1, real.shape[-1]).max(dim=0).values
        flat = fake[0][key].reshape(-1, real.shape[-1])
        assert bool(((flat >= lo) & (flat <= hi)).all())


def test_worst_case_is_the_max_over_frames(model, frames):
    mean = analyze(model, frames[:2], "2:4").distortion()
    worst = analyze(model, frames[:2], "2:4", worst_case=True).distortion()
    pruned = [(m[-1], w[-1]) for m, w in zip(mean, worst, strict=True) if len(m) > 1]
    assert pruned and all(w >= m > 0 for m, w in pruned) and any(w > m * 1.01 for m, w in pruned)


def test_replay_keeps_instance_level_forwards():
    """A converted model may rebind a module's forward on the instance; replaying must restore it."""
    import types

    import torch

    from sparsefuse.passes.sparsity.replay import ReplayCache

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))

    def doubled(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias) * 2

    model[1].forward = types.MethodType(doubled, model[1])
    frames = [torch.ones(2, 3)]
    cache = ReplayCache(model, frames, lambda m, f: m(f), {})
    assert "forward" in model[1].__dict__
    expected = doubled(model[1], model[0](frames[0]))
    assert torch.allclose(cache.replay(0, []), expected)
    assert torch.allclose(model(frames[0]), expected)
