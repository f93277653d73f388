"""Latency samples as the gate sees them, and loading them from profile files.

A profile (OUT/profile.json from targets/profiler.py, or one written by ``sparsefuse regress``)
must carry raw per-run samples: a bootstrap needs the distribution, not only its summary.
Accepted layouts, all in milliseconds:
- ``samples_ms: [...]`` or ``latency_ms: {"samples": [...]}`` / ``latency: {"samples_ms": [...]}``;
- per module: ``modules: {name: {"samples_ms": [...]}}`` or ``modules: [{"name", "samples_ms"}]``;
- optional reference workload: ``reference_samples_ms: [...]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsefuse.errors import SparsefuseError

SAMPLES_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LatencySamples:
    """Per-run latencies (ms) of one model: end to end, per module, and the reference kernel."""

    total_ms: tuple[float, ...]
    modules_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Per-module time per inference (ms) where a profile has no per-run module samples
    # (targets/profiler.py's per_module_ms): shown as a point delta, without a CI.
    module_point_ms: dict[str, float] = field(default_factory=dict)
    reference_ms: tuple[float, ...] | None = None
    label: str = "measured"
    device: str = ""
    clock: str = "wall"  # "wall" (end-to-end) or "thread" (CPU time of the running thread)
    interleaved_with: str = ""  # name of the peer measured in the same run, if any

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SAMPLES_SCHEMA_VERSION,
            "label": self.label,
            "device": self.device,
            "clock": self.clock,
            "samples_ms": list(self.total_ms),
            "modules": {name: {"samples_ms": list(v)} for name, v in sorted(self.modules_ms.items())},
        }
        if self.module_point_ms:
            out["per_module_ms"] = dict(sorted(self.module_point_ms.items()))
        if self.reference_ms is not None:
            out["reference_samples_ms"] = list(self.reference_ms)
        if self.interleaved_with:
            out["interleaved_with"] = self.interleaved_with
        return out


def _floats(values: Any, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise SparsefuseError(f"{where} is not a list of numbers", "samples are per-run latencies in ms")
    return tuple(float(v) for v in values)


def _total_samples(doc: dict[str, Any], where: str) -> tuple[float, ...]:
    if "samples_ms" in doc:
        return _floats(doc["samples_ms"], f"{where}: samples_ms")
    for key, inner in (("latency_ms", "samples"), ("latency", "samples_ms"), ("latency_ms", "samples_ms")):
        block = doc.get(key)
        if isinstance(block, dict) and inner in block:
            return _floats(block[inner], f"{where}: {key}.{inner}")
    raise SparsefuseError(
        f"{where} has no per-run latency samples (samples_ms)",
        "the gate needs the raw distribution: profile with a runs count, or let regress measure (--onnx)",
    )


def _module_samples(doc: dict[str, Any], where: str) -> dict[str, tuple[float, ...]]:
    modules = doc.get("modules", {})
    items: list[tuple[str, Any]]
    if isinstance(modules, dict):
        items = list(modules.items())
    elif isinstance(modules, list):
        items = [(m.get("name", ""), m) for m in modules if isinstance(m, dict)]
    else:
        return {}
    out: dict[str, tuple[float, ...]] = {}
    for name, block in items:
        if isinstance(block, dict) and "samples_ms" in block and name:
            out[str(name)] = _floats(block["samples_ms"], f"{where}: modules.{name}.samples_ms")
    return out


def _module_points(doc: dict[str, Any]) -> dict[str, float]:
    points = doc.get("per_module_ms", {})
    if not isinstance(points, dict):
        return {}
    return {str(k): float(v) for k, v in points.items() if isinstance(v, (int, float))}


def samples_from_json(doc: dict[str, Any], where: str) -> LatencySamples:
    """Parse a profile-like JSON document; ``where`` names it in errors."""
    label = str(doc.get("label", "measured"))
    if label != "measured":
        raise SparsefuseError(
            f"{where} is labelled {label!r}; a latency gate compares measured runs only",
            "profile on a device (or let regress measure with --onnx) instead of using cost-model estimates",
        )
    ref = doc.get("reference_samples_ms")
    total = _total_samples(doc, where)
    reference = _floats(ref, f"{where}: reference_samples_ms") if ref is not None else None
    if reference is not None and len(reference) != len(total):
        raise SparsefuseError(
            f"{where}: reference_samples_ms has {len(reference)} runs, samples_ms {len(total)}",
            "the reference kernel is timed once per model run",
        )
    device = doc.get("device", "")
    return LatencySamples(
        total_ms=total,
        modules_ms=_module_samples(doc, where),
        module_point_ms=_module_points(doc),
        reference_ms=reference,
        label=label,
        device=device if isinstance(device, str) else json.dumps(device, sort_keys=True),
        clock=str(doc.get("clock", "wall")),
        interleaved_with=str(doc.get("interleaved_with", "")),
    )


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SparsefuseError(f"{what} {path} does not exist", "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparsefuseError(f"{what} {path} is not valid JSON: {exc}", "regenerate the file") from None
    if not isinstance(doc, dict):
        raise SparsefuseError(f"{what} {path} is not a JSON object", "regenerate the file")
    return doc
