"""Attribute ONNX Runtime profiler events to model modules.

A module is the leading component of a node's scope path: ``/camera/backbone/conv1/Conv`` and
``camera.backbone.conv1`` belong to ``camera`` (depth 1). ORT's graph optimizer renames nodes
(fusions, NCHWc layout nodes named after their output tensor), so an event is matched against
the original node names, then the original tensor names, then the module names as tokens.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

import onnx

OTHER = "other"
SCHEMES = ("prefix", "bevfusion")
_SPLIT = re.compile(r"[/.:]")
_SUFFIXES = ("_kernel_time", "_nchwc", "_fence_before", "_fence_after")


def scope_module(name: str, depth: int = 1) -> str | None:
    """Module of a scoped name (``/a/b/c`` or ``a.b.c``); None when the name has no scope."""
    parts = [p for p in _SPLIT.split(name) if p]
    if len(parts) < 2:
        return None
    return "/".join(parts[:depth])


def _bevfusion_module(name: str, op_type: str) -> str | None:
    from sparsefuse.targets.modules import module_of

    module = module_of(name, op_type)
    return None if module == OTHER else module


class ModuleMap:
    """Maps profiler event names to module names for one ONNX graph."""

    def __init__(self, model: onnx.ModelProto, depth: int = 1, scheme: str = "prefix") -> None:
        """scheme "prefix": module = leading scope component(s); "bevfusion": the BEVFusion split
        of sparsefuse.targets.modules (voxelize, lidar_backbone, camera_depth, ...)."""
        if scheme not in SCHEMES:
            raise ValueError(f"module scheme must be one of {SCHEMES}, got {scheme!r}")
        self.scheme = scheme
        self.by_node: dict[str, str] = {}
        self.by_tensor: dict[str, str] = {}
        for node in model.graph.node:
            module = _bevfusion_module(node.name, node.op_type) if scheme == "bevfusion" else \
                scope_module(node.name, depth)
            if module is None:
                continue
            self.by_node[node.name] = module
            for out in node.output:
                self.by_tensor[out] = module
        self.modules: tuple[str, ...] = tuple(sorted(set(self.by_node.values())))

    def module_of(self, event_name: str) -> str:
        name = event_name
        for suffix in _SUFFIXES:
            name = name.removesuffix(suffix)
        name = re.sub(r"_token_\d+$", "", name)
        if name in self.by_node:
            return self.by_node[name]
        if name in self.by_tensor:
            return self.by_tensor[name]
        if self.scheme == "bevfusion":
            return _bevfusion_module(name, "") or OTHER
        tokens = set(_SPLIT.split(name))
        for module in self.modules:
            if module.split("/")[0] in tokens:
                return module
        return OTHER


def per_run_module_ms(events: Iterable[dict], module_map: ModuleMap, skip_runs: int) -> list[dict[str, float]]:
    """Per model run (after the first ``skip_runs``), the summed kernel time (ms) per module.

    events: the ORT profiler's chrome-trace list. Node events are assigned to the model_run
    whose [ts, ts+dur] interval contains them.
    """
    events = list(events)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = runs[skip_runs:]
    out: list[dict[str, float]] = [dict.fromkeys(module_map.modules, 0.0) for _ in runs]
    starts = [r[0] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > runs[i][1]:
            continue
        module = module_map.module_of(e["name"])
        out[i][module] = out[i].get(module, 0.0) + e["dur"] / 1000.0
    return out
