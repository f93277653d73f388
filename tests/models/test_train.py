"""Training support: fine-tuning with frozen masks, checkpoints, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.geometry import nearest_points
from sparsefuse.models.presets import build_model, get_preset, preset_rig
from sparsefuse.models.synthetic import make_frame
from sparsefuse.models.train import (
    TrainConfig,
    depth_target,
    evaluate,
    finetune,
    frame_targets,
    load_checkpoint,
    model_grid,
    save_checkpoint,
    semantic_head,
    semantic_target,
    sensor_inputs,
    step_loss,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the scatter-heavy sparse ops crawl with contended OpenMP threads on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rig():
    return preset_rig(get_preset("bevfusion-tiny"))


@pytest.fixture(scope="module")
def frames(rig):
    return [make_frame(s, rig) for s in (900, 901)]


class ToyModel(nn.Module):
    """A fast stand-in with the reference model's interface: LiDAR BEV histogram -> convs -> heads."""

    def __init__(self, rig) -> None:
        super().__init__()
        self.rig = rig
        self.body = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(16, 17, 1)

    def forward(self, images, points):
        y_size, x_size = self.rig.bev_shape
        xmin, ymin = self.rig.bev_range[:2]
        ix = ((points[:, 0] - xmin) / self.rig.bev_cell).long().clamp(0, x_size - 1)
        iy = ((points[:, 1] - ymin) / self.rig.bev_cell).long().clamp(0, y_size - 1)
        bev = torch.zeros(2, y_size * x_size)
        bev[0].index_add_(0, iy * x_size + ix, torch.ones(len(points)))
        bev[1].index_add_(0, iy * x_size + ix, points[:, 2])
        out = self.head(self.body(torch.log1p(bev.view(1, 2, y_size, x_size).abs()) + images.mean()))
        return out[:, :5], out[:, 5:9], out[:, 9:]


def _random_mask(param: torch.Tensor, keep: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(param.shape, generator=g) < keep


def test_finetune_keeps_masked_weights_zero_and_lowers_the_loss(rig, frames):
    torch.manual_seed(0)
    model = ToyModel(rig)
    masks = {
        name: _random_mask(p, 0.5, i)
        for i, (name, p) in enumerate(model.named_parameters())
        if name.endswith("weight")
    }
    history = finetune(model, frames, masks, steps=30, lr=1e-2)
    assert len(history) == 30
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:5])
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
        assert torch.count_nonzero(params[name][mask]) > 0.9 * mask.sum()


def test_finetune_on_the_reference_model_keeps_masks(rig, frames):
    model = build_model("bevfusion-tiny")
    names = ["lidar.encoder.stages.1.0.weight", "camera.backbone.stem.0.weight", "head.heatmap.1.weight"]
    params = dict(model.named_parameters())
    assert set(names) <= set(params)
    masks = {n: _random_mask(params[n], 0.5, i) for i, n in enumerate(names)}
    before = {n: params[n].detach().clone() for n in params}
    finetune(model, frames[:1], masks, steps=2, lr=1e-3)
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
    changed = [n for n in params if not torch.equal(before[n], params[n])]
    assert any(n.startswith("lidar.") for n in changed) and any(n.startswith("camera.") for n in changed)


def test_finetune_rejects_bad_masks(rig, frames):
    model = ToyModel(rig)
    with pytest.raises(SparsefuseError, match="unknown parameter"):
        finetune(model, frames, {"nope.weight": torch.ones(1, dtype=torch.bool)}, steps=1)
    with pytest.raises(SparsefuseError, match="shape"):
        finetune(model, frames, {"head.weight": torch.ones(3, dtype=torch.bool)}, steps=1)


def test_train_updates_weights_and_logs(rig, frames):
    torch.manual_seed(0)
    model = ToyModel(rig)
    before = model.head.weight.detach().clone()
    history = train(model, frames, TrainConfig(steps=4, lr=1e-2, log_every=2))
    assert len(history) == 4 and {"loss", "seg", "heatmap", "box"} <= set(history[0])
    assert not torch.equal(before, model.head.weight)
    assert "depth" not in history[0]  # no LSS depth net: no depth supervision


def test_reference_model_trains_its_depth_net_on_lidar_depth(rig, frames):
    target = depth_target(frames[0], build_model("bevfusion-tiny"))
    assert target.shape == (6, 8, 22) and 0.2 < float((target >= 0).float().mean()) < 0.9
    grid_targets = {**frame_targets(frames[0], model_grid(build_model("bevfusion-tiny"))), "depth": target}

    def depth_after(depth_weight: float) -> tuple[float, list[dict]]:
        model = build_model("bevfusion-tiny", seed=0)
        config = TrainConfig(steps=6, lr=2e-3, drop_camera=0.0, drop_lidar=0.0, depth_weight=depth_weight)
        history = train(model, frames[:1], config)
        with torch.no_grad():
            return step_loss(model, frames[0], grid_targets)[1]["depth"], history

    supervised, history = depth_after(1.0)
    unsupervised, off = depth_after(0.0)
    assert all("depth" in h for h in history) and "depth" not in off[0]
    assert supervised < 0.8 * unsupervised  # the LiDAR depth target is what teaches the depth net
    blanked = train(build_model("bevfusion-tiny"), frames[:1], TrainConfig(steps=1, drop_camera=1.0))
    assert "depth" not in blanked[0]  # blanked cameras carry no depth to learn


def test_semantic_auxiliary_labels_camera_pixels_and_stays_out_of_the_model(rig, frames, tmp_path):
    model = build_model("bevfusion-tiny", seed=0)
    target = semantic_target(frames[0], model)
    depth = depth_target(frames[0], model)
    assert target.shape == depth.shape
    labelled = target >= 0
    assert labelled.any() and torch.all(target[labelled] <= 5) and (target == 0).any()
    assert (target >= 1).any()  # some pixels see objects
    index, _ = nearest_points(np.asarray(frames[0]["points"]), model.rig, 8)
    assert not np.any(labelled.numpy() & (index < 0))  # a label needs a LiDAR point seen there
    head = semantic_head(model)
    assert head.out_channels == 6 and head.in_channels == 32
    keys = set(model.state_dict())
    config = TrainConfig(steps=2, semantic_weight=1.0, drop_camera=0.0, drop_lidar=0.0)
    history = train(model, frames[:1], config)
    assert all("semantic" in h and h["semantic"] > 0 for h in history)
    assert set(model.state_dict()) == keys  # the training-only head is not saved with the model
    off = train(build_model("bevfusion-tiny"), frames[:1], TrainConfig(steps=1))
    assert "semantic" not in off[0]


def test_checkpoint_round_trip_and_errors(tmp_path, rig):
    model = build_model("bevfusion-tiny", seed=1)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"seed": "1"})
    fresh = load_checkpoint(build_model("bevfusion-tiny", seed=2), path)
    for (n, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), n
    with pytest.raises(SparsefuseError, match="does not fit"):
        load_checkpoint(ToyModel(rig), path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SparsefuseError, match="cannot read"):
        load_checkpoint(model, tmp_path / "bad.safetensors")
    with pytest.raises(SparsefuseError, match="not found"):
        load_checkpoint(model, tmp_path / "missing.safetensors")


def test_modes_blank_one_modality(frames):
    images, points = sensor_inputs(frames[0], "lidar_only")
    assert images.abs().sum() == 0 and len(points) == len(frames[0]["points"])
    images, points = sensor_inputs(frames[0], "camera_only")
    assert images.abs().sum() > 0 and points.shape == (0, 4)
    with pytest.raises(SparsefuseError):
        sensor_inputs(frames[0], "radar_only")


def test_evaluate_reports_perfect_scores_for_an_oracle(rig, frames):
    class Oracle(nn.Module):
        """Returns the labels themselves as logits (+-20) and CenterPoint targets."""

        def __init__(self) -> None:
            super().__init__()
            self.rig = rig
            self.frame = None

        def forward(self, images, points):
            from sparsefuse.models.train import frame_targets, model_grid

            t = frame_targets(self.frame, model_grid(self))
            heat = torch.where(t["heatmap"] == 1.0, 20.0, -20.0)[None]
            return (t["seg_masks"][None] * 40 - 20, heat, t["boxes"][None])

    oracle = Oracle()

    def with_frame():
        for f in frames:
            oracle.frame = f
            yield f

    result = evaluate(oracle, with_frame())
    assert result["mIoU"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["frames"] == 2


def test_synthetic_frames_for_a_model_match_the_generator(rig, frames, tmp_path):
    from sparsefuse.models.train import synthetic_frames

    got = synthetic_frames(ToyModel(rig), [900], cache_dir=tmp_path)
    again = synthetic_frames(ToyModel(rig), [900], cache_dir=tmp_path)  # from the cache this time
    assert len(list(tmp_path.glob("*.npz"))) == 1
    for key in frames[0]:
        assert got[0][key].tobytes() == frames[0][key].tobytes() == again[0][key].tobytes(), key


def test_checkpoints_are_shared_files_not_0600(tmp_path):
    import os

    from sparsefuse.models.presets import build_model
    from sparsefuse.models.train import save_checkpoint

    umask = os.umask(0)
    os.umask(umask)
    path = save_checkpoint(build_model("bevfusion-tiny"), tmp_path / "w.safetensors")
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
