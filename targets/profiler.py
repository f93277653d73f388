"""Latency profiles: timing loop, statistics, per-node and per-module breakdown, profile.json.

Every profile is labelled: ``measured`` (device, backend, versions) or ``estimated`` (cost model
name and version). Nothing estimated is ever written as measured (docs/design.md §6).

profile.json (schema_version 1):
    label: "measured" | "estimated"; target; backend; device; versions {name: version};
    cost_model {name, version} (estimated only);
    latency_ms {median, p90, p99, mean, std, min, max, runs} (measured) or {total} (estimated);
    throughput_fps (1000 / median, or 1000 / total); peak_memory_mb (measured, may be null);
    per_module_ms {module: ms per inference}; per_node [{name, op_type, module, time_ms}];
    lidar_points_per_frame [int] (one entry per timed run); samples_ms [float].
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sparsefuse.atomic import write_json
from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.modules import MODULES, module_of

SCHEMA_VERSION = 1
LABELS = ("measured", "estimated")


@dataclass(frozen=True)
class NodeTime:
    """Time of one graph node (or engine layer) per inference, in ms."""

    name: str
    op_type: str
    time_ms: float
    module: str = ""
    scope: str = ""  # torch module path, where the exporter recorded one

    def with_module(self) -> NodeTime:
        if self.module:
            return self
        return replace(self, module=module_of(self.scope or self.name, self.op_type))


@dataclass(frozen=True)
class Profile:
    """One latency profile. ``samples_ms`` holds the end-to-end time of each timed run."""

    label: str
    target: str
    backend: str
    device: str = ""
    versions: tuple[tuple[str, str], ...] = ()
    samples_ms: tuple[float, ...] = ()
    per_node: tuple[NodeTime, ...] = ()
    lidar_points: tuple[int, ...] = ()
    peak_memory_mb: float | None = None
    estimated_total_ms: float | None = None
    cost_model: tuple[str, str] | None = None  # (name, version), estimated only
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"profile label must be one of {LABELS}, got {self.label!r}")
        if self.label == "estimated" and self.cost_model is None:
            raise ValueError("an estimated profile must name its cost model")
        if self.label == "measured" and self.cost_model is not None:
            raise ValueError("a measured profile carries no cost model")

    def per_module_ms(self) -> dict[str, float]:
        return aggregate_modules(self.per_node)

    def to_json(self) -> dict:
        doc: dict = {
            "schema_version": SCHEMA_VERSION,
            "label": self.label,
            "target": self.target,
            "backend": self.backend,
            "device": self.device,
            "versions": dict(self.versions),
            "per_module_ms": self.per_module_ms(),
            "per_node": [
                {
                    "name": n.name,
                    "op_type": n.op_type,
                    "module": n.with_module().module,
                    "scope": n.scope,
                    "time_ms": n.time_ms,
                }
                for n in self.per_node
            ],
            "lidar_points_per_frame": list(self.lidar_points),
            "notes": list(self.notes),
        }
        if self.label == "measured":
            stats = latency_stats(self.samples_ms)
            doc["latency_ms"] = stats
            doc["throughput_fps"] = 1000.0 / stats["median"] if stats["median"] > 0 else None
            doc["peak_memory_mb"] = self.peak_memory_mb
            doc["samples_ms"] = list(self.samples_ms)
        else:
            total = (
                self.estimated_total_ms
                if self.estimated_total_ms is not None
                else sum(n.time_ms for n in self.per_node)
            )
            doc["latency_ms"] = {"total": total}
            doc["throughput_fps"] = 1000.0 / total if total > 0 else None
            doc["cost_model"] = {"name": self.cost_model[0], "version": self.cost_model[1]}
        return doc


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """median, p90, p99, mean, std (population), min, max of per-run latencies [ms]."""
    if len(samples_ms) == 0:
        raise SparsefuseError("no timed runs to summarize", "use --runs >= 1 or a positive --duration")
    x = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "p99": float(np.percentile(x, 99)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "runs": int(x.size),
    }


def aggregate_modules(per_node: Sequence[NodeTime]) -> dict[str, float]:
    """Sum of node times per module [ms], in MODULES order; modules with no nodes are left out."""
    totals = dict.fromkeys(MODULES, 0.0)
    seen: set[str] = set()
    for node in per_node:
        module = node.with_module().module
        totals[module] = totals.get(module, 0.0) + node.time_ms
        seen.add(module)
    return {m: totals[m] for m in totals if m in seen}


def time_runs(
    run_frame: Callable[[int], None],
    num_frames: int,
    warmup: int = 3,
    runs: int = 20,
    duration_s: float | None = None,
) -> tuple[list[float], list[int]]:
    """Warm up, then time ``runs`` calls (or as many as fit in ``duration_s``), cycling frames.

    Returns (per-run wall times [ms], frame index of each timed run).
    """
    if num_frames < 1:
        raise SparsefuseError("no input frames to profile", "pass at least one frame")
    if runs < 1 and not duration_s:
        raise SparsefuseError(f"runs must be >= 1, got {runs}", "use --runs N with N >= 1")
    for i in range(max(0, warmup)):
        run_frame(i % num_frames)
    samples: list[float] = []
    frames: list[int] = []
    start = time.perf_counter()
    i = 0
    while True:
        frame = i % num_frames
        t0 = time.perf_counter_ns()
        run_frame(frame)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        frames.append(frame)
        i += 1
        if duration_s:
            if time.perf_counter() - start >= duration_s and i >= 1:
                break
        elif i >= runs:
            break
    return samples, frames


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform's best guess."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def points_per_frame(
    feeds_list: Sequence[Mapping[str, np.ndarray]], frames: Sequence[int], points_input: str = "points"
) -> tuple[int, ...]:
    """LiDAR point count of each timed run's frame (0 where the model has no points input)."""
    return tuple(
        int(feeds_list[f][points_input].shape[0]) if points_input in feeds_list[f] else 0 for f in frames
    )


def cuda_median_ms(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs, each timed with CUDA events (needs a GPU)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process [MiB] (VmHWM), None where /proc is absent."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def write_profile(profile: Profile, out_path: str | os.PathLike[str], plot: bool = True) -> Path:
    """Write profile.json (and profile.png beside it) atomically. Returns the JSON path."""
    out_path = Path(out_path)
    write_json(out_path, profile.to_json())
    if plot:
        from sparsefuse.targets.profile_plot import plot_profile

        plot_profile(profile, out_path.with_suffix(".png"))
    return out_path
