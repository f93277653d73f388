from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends import torch_backend
from sparsefuse.targets.registry import get_target


class Branch(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.backbone(x))


class Lidar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 8)

    def forward(self, points):
        return self.encoder(points).mean(0)


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seg = nn.Conv2d(8, 2, 1)
        self.heatmap = nn.Conv2d(8, 3, 1)
        self.boxes = nn.Conv2d(8, 8, 1)


class TinyFusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.camera = Branch(3, 8)
        self.lidar = Lidar()
        self.head = Heads()

    def forward(self, images, points):
        x = self.camera(images[:1]) + self.lidar(points)[None, :, None, None]
        return self.head.seg(x), self.head.heatmap(x), self.head.boxes(x)


def feeds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.random((2, 3, 8, 8), dtype=np.float32),
        "points": rng.random((n, 4), dtype=np.float32),
    }


def test_golden_outputs_match_eager_model():
    torch.manual_seed(0)
    model = TinyFusion()
    built = torch_backend.build(model, get_target("cpu"), torch_backend.TorchOptions(device="cpu"))
    f = feeds(17)
    out = torch_backend.run(built, f)
    with torch.no_grad():
        ref = model(torch.from_numpy(f["images"]), torch.from_numpy(f["points"]))
    assert list(out) == ["seg_logits", "heatmap", "boxes"]
    for got, want in zip(out.values(), ref, strict=True):
        np.testing.assert_array_equal(got, want.numpy())
    with pytest.raises(SparsefuseError, match="missing model inputs"):
        torch_backend.run(built, {"images": f["images"]})


def test_cpu_profile_with_module_hooks():
    built = torch_backend.build(TinyFusion(), get_target("cpu"), torch_backend.TorchOptions(device="cpu"))
    prof = torch_backend.profile(built, [feeds(10), feeds(20, 1)], runs=4, warmup=1, module_runs=2)
    doc = prof.to_json()
    assert doc["label"] == "measured" and doc["backend"] == "torch" and doc["latency_ms"]["runs"] == 4
    assert doc["lidar_points_per_frame"] == [10, 20, 10, 20]
    names = {n["name"]: n["module"] for n in doc["per_node"]}
    assert names == {
        "camera.backbone": "camera_backbone",
        "lidar.encoder": "lidar_backbone",
        "head.seg": "heads",
        "head.heatmap": "heads",
        "head.boxes": "heads",
    }
    assert all(n["time_ms"] > 0 for n in doc["per_node"])
    # Hooks are removed after profiling.
    assert not built.model.camera.backbone._forward_hooks


def test_cuda_request_without_gpu_is_user_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SparsefuseError, match="no CUDA device"):
        torch_backend.build(TinyFusion(), get_target("cpu"), torch_backend.TorchOptions(device="cuda"))


@pytest.mark.gpu
def test_gpu_profile_uses_cuda_events():
    built = torch_backend.build(
        TinyFusion(), get_target("desktop/h100"), torch_backend.TorchOptions(device="cuda")
    )
    prof = torch_backend.profile(built, [feeds(1000)], runs=10, warmup=3)
    doc = prof.to_json()
    assert doc["device"] != "CPU (torch)" and doc["peak_memory_mb"] > 0
    assert doc["latency_ms"]["median"] > 0 and doc["per_module_ms"]["camera_backbone"] > 0
    np.testing.assert_allclose(
        torch_backend.run(built, feeds(5))["heatmap"],
        torch_backend.run(
            torch_backend.build(built.model.cpu(), get_target("cpu"), torch_backend.TorchOptions("cpu")),
            feeds(5),
        )["heatmap"],
        rtol=1e-4,
        atol=1e-4,
    )


def test_cli_profile_backend_torch(tmp_path, monkeypatch):
    import json

    import sparsefuse.models.presets as presets
    from sparsefuse.compiler.cli import main

    monkeypatch.setattr(presets, "build_model", lambda name, seed=0, **_: TinyFusion())
    np.savez(tmp_path / "in.npz", **feeds(12))
    argv = [
        "profile",
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--target",
        "cpu",
        "--inputs",
        str(tmp_path / "in.npz"),
        "--out",
        str(tmp_path / "p.json"),
        "--runs",
        "2",
        "--warmup",
        "1",
    ]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert (
        doc["backend"] == "torch" and doc["label"] == "measured" and doc["lidar_points_per_frame"] == [12, 12]
    )
