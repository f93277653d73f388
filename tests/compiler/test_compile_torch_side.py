"""The PyTorch side of compile: fresh verify frames and user rigs."""

from __future__ import annotations

import json

from sparsefuse.compiler.config import make_config
from sparsefuse.compiler.pipeline import TorchSide
from sparsefuse.models.rig import nuscenes_like_rig


def test_verify_frames_are_fresh_and_change_the_point_count(tmp_path):
    side = TorchSide(make_config("bevfusion-tiny", "cpu", tmp_path / "out", seed=5))
    export_points = side.export_frame()["points"].shape[0]
    frames = side.verify_frames(4)
    seeds = [info["seed"] for info, _ in frames]
    counts = [frame["points"].shape[0] for _, frame in frames]
    assert 5 not in seeds and len(set(seeds)) == 4
    assert export_points not in counts and len(set(counts)) == 4
    assert [info["num_points"] for info, _ in frames] == counts
    assert all(frame["images"].shape == side.export_frame()["images"].shape for _, frame in frames)


def test_a_user_rig_sets_the_camera_count_of_frames_and_model(tmp_path):
    rig = nuscenes_like_rig().to_dict()
    rig["cameras"] = rig["cameras"][:4]
    rig.update(depth_range=[1.0, 49.0, 3.0], point_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
               voxel_size=[0.2, 0.2, 0.4], bev_range=[-51.2, -51.2, 51.2, 51.2], bev_cell=1.6)
    path = tmp_path / "rig4.json"
    path.write_text(json.dumps(rig))
    side = TorchSide(make_config("bevfusion-tiny", "cpu", tmp_path / "out", rig=path))
    frame = side.frame(3, num_points=2000)
    assert frame["images"].shape[0] == 4 and frame["points"].shape == (2000, 4)
    outputs = side.forward(frame)
    assert {k: v.shape for k, v in outputs.items()} == {
        "seg_logits": (1, 5, 64, 64), "heatmap": (1, 4, 64, 64), "boxes": (1, 8, 64, 64)}


def test_weights_file_replaces_the_seeded_init(tmp_path):
    import torch

    from sparsefuse.compiler.pipeline import input_hashes
    from sparsefuse.models.presets import build_model
    from sparsefuse.models.train import save_checkpoint

    trained = build_model("bevfusion-tiny", seed=7)
    checkpoint = save_checkpoint(trained, tmp_path / "w.safetensors")
    config = make_config("bevfusion-tiny", "cpu", tmp_path / "out", seed=0, weights=checkpoint)
    loaded = dict(TorchSide(config).model.named_parameters())
    for name, param in trained.named_parameters():
        assert torch.equal(loaded[name], param), name
    seeded = dict(build_model("bevfusion-tiny", seed=0).named_parameters())
    assert any(not torch.equal(loaded[n], seeded[n]) for n in seeded)
    assert len(input_hashes(config)["weights"]) == 64  # its SHA-256 is recorded in compile.json
    assert config.model_key_dict()["weights"] == checkpoint.resolve().as_posix()
