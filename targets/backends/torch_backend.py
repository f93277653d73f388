"""PyTorch backend: golden outputs from the reference model, and measurements (CUDA events on a
GPU, wall clock on the CPU) with per-module times from forward hooks.

``build`` takes the torch model itself (the reference), not an ONNX file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.modules import module_of
from sparsefuse.targets.profiler import NodeTime, Profile, time_runs
from sparsefuse.targets.registry import Target

OUTPUT_NAMES = ("seg_logits", "heatmap", "boxes")
INPUT_NAMES = ("images", "points")


@dataclass(frozen=True)
class TorchOptions:
    """device: "auto" (CUDA when available), "cpu" or "cuda"; hook_depth: module-path depth
    whose modules get per-module timers (2 = "camera.backbone", "lidar.encoder", ...);
    input_names / output_names: the model spec's (default: the presets' forward(images, points))."""

    device: str = "auto"
    hook_depth: int = 2
    input_names: tuple[str, ...] = INPUT_NAMES
    output_names: tuple[str, ...] = OUTPUT_NAMES


@dataclass(frozen=True)
class Built:
    model: Any
    device: str
    target_tag: str
    options: TorchOptions
    backend: str = "torch"


def build(model: Any, target: Target, options: TorchOptions | None = None, out_dir: Any = None) -> Built:
    """Move the reference model to the device (eval mode). ``out_dir`` is unused (nothing to save)."""
    import torch

    options = options or TorchOptions()
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SparsefuseError("device cuda requested but no CUDA device is available", "use --device cpu")
    if device not in ("cpu", "cuda"):
        raise SparsefuseError(f"unknown torch device '{device}'", "use auto, cpu or cuda")
    return Built(model=model.eval().to(device), device=device, target_tag=target.tag, options=options)


def _tensors(built: Built, feeds: Mapping[str, np.ndarray]) -> list[Any]:
    """The forward's arguments in order (the model is called positionally, in the spec's order)."""
    import torch

    names = built.options.input_names
    missing = [n for n in names if n not in feeds]
    if missing:
        raise SparsefuseError(
            f"missing model inputs: {', '.join(missing)}", f"the model expects {names}"
        )
    return [torch.as_tensor(np.ascontiguousarray(feeds[n])).to(built.device) for n in names]


def run(built: Built, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Golden outputs: the reference model's outputs by name (numpy, on the host)."""
    import torch

    with torch.inference_mode():
        outs = built.model(*_tensors(built, feeds))
    if isinstance(outs, Mapping):
        return {k: v.detach().cpu().numpy() for k, v in outs.items()}
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    return {name: t.detach().cpu().numpy()
            for name, t in zip(built.options.output_names, outs, strict=True)}


class _ModuleTimers:
    """Forward pre/post hooks on the modules at one path depth; CUDA events or wall clock."""

    def __init__(self, model: Any, depth: int, cuda: bool) -> None:
        import torch

        self.cuda = cuda
        self.records: dict[str, list[Any]] = {}
        self.handles = []
        for path, module in model.named_modules():
            if path and path.count(".") == depth - 1:
                self.handles.append(module.register_forward_pre_hook(self._pre(path)))
                self.handles.append(module.register_forward_hook(self._post(path)))
        self._torch = torch
        self._open: dict[str, Any] = {}

    def _stamp(self) -> Any:
        if self.cuda:
            event = self._torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, path: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self._open[path] = self._stamp()

        return hook

    def _post(self, path: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            self.records.setdefault(path, []).append((self._open.pop(path), self._stamp()))

        return hook

    def mean_ms(self, runs: int) -> dict[str, float]:
        if self.cuda:
            self._torch.cuda.synchronize()
        out = {}
        for path, pairs in self.records.items():
            total = sum(a.elapsed_time(b) if self.cuda else (b - a) * 1e3 for a, b in pairs)
            out[path] = total / max(1, runs)
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def profile(
    built: Built,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    runs: int = 20,
    warmup: int = 3,
    duration_s: float | None = None,
    module_runs: int = 3,
) -> Profile:
    """End-to-end latency (CUDA events around each forward on a GPU, else wall clock), then a
    separate hooked pass for per-module times (hooks add overhead, so they stay out of the
    end-to-end numbers)."""
    import torch

    cuda = built.device == "cuda"
    inputs = [_tensors(built, f) for f in feeds_list]
    samples: list[float] = []

    def forward(i: int) -> None:
        with torch.inference_mode():
            built.model(*inputs[i])

    if cuda:
        for i in range(max(0, warmup)):
            forward(i % len(inputs))
        frames = []
        for i in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(i % len(inputs))
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
            frames.append(i % len(inputs))
    else:
        samples, frames = time_runs(forward, len(inputs), warmup, runs, duration_s)
    timers = _ModuleTimers(built.model, built.options.hook_depth, cuda)
    try:
        for i in range(module_runs):
            forward(i % len(inputs))
        per_path = timers.mean_ms(module_runs)
    finally:
        timers.close()
    per_node = tuple(
        NodeTime(path, "module", ms, module_of(path.replace(".", "/")), path) for path, ms in per_path.items()
    )
    device = torch.cuda.get_device_name(0) if cuda else "CPU (torch)"
    return Profile(
        label="measured",
        target=built.target_tag,
        backend="torch",
        device=device,
        versions=(("torch", torch.__version__),),
        samples_ms=tuple(samples),
        per_node=per_node,
        lidar_points=tuple(int(feeds_list[f]["points"].shape[0])
                           for f in frames if "points" in feeds_list[f]),
        peak_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        notes=("per-module times from forward hooks in a separate pass",),
    )
