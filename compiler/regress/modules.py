"""Attribute ONNX Runtime profiler events to model modules.

A module is the leading component of a node's scope path: ``/camera/backbone/conv1/Conv`` and
``camera.backbone.conv1`` belong to ``camera`` (depth 1). The dynamo exporter names nodes
``node_conv2d_15`` and keeps the torch module path in the node's metadata
(``pkg.torch.onnx.name_scopes``); that path is used when the name has no scope. ORT's graph
optimizer renames nodes (fusions, NCHWc layout nodes named after their output tensor) and
inlines custom-op bodies (``_inlfunc_<fn>__site<i>_...`` after :func:`prepare_for_profiling`), so
an event is matched against the original node names, the original tensor names, the inlined
call site, then the module names as tokens.
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
_INLINED = re.compile(r"^_inlfunc_.+?__site(\d+)_")
_SITE = re.compile(r"__site\d+$")


def scope_module(name: str, depth: int = 1) -> str | None:
    """Module of a scoped name (``/a/b/c`` or ``a.b.c``); None when the name has no scope."""
    parts = [p for p in _SPLIT.split(name) if p]
    if len(parts) < 2:
        return None
    return "/".join(parts[:depth])


def torch_scope_module(scope: str, depth: int = 1) -> str | None:
    """Module of a torch module path ("camera/camera.backbone/..."), as ``scope_module`` names it:
    depth 1 "camera", depth 2 "camera/backbone"; None for the top level ("")."""
    paths = [p for p in scope.split("/") if p]
    if not paths:
        return None
    return "/".join(paths[min(depth, len(paths)) - 1].split(".")[:depth])


class ModuleMap:
    """Maps profiler event names to module names for one ONNX graph."""

    def __init__(self, model: onnx.ModelProto, depth: int = 1, scheme: str = "prefix") -> None:
        """scheme "prefix": module = leading scope component(s) of node names or, where a name has
        none, of the torch module path; "bevfusion": the BEVFusion split of
        sparsefuse.targets.modules (voxelize, lidar_backbone, camera_depth, ...). Profile the model
        as prepared by :func:`prepare_for_profiling` so inlined custom-op bodies keep their call site.
        """
        if scheme not in SCHEMES:
            raise ValueError(f"module scheme must be one of {SCHEMES}, got {scheme!r}")
        self.scheme = scheme
        self.model = model
        self.by_node: dict[str, str] = {}
        self.by_tensor: dict[str, str] = {}
        self._cache: dict[str, str] = {}
        from sparsefuse.targets.modules import module_of, node_scopes

        scopes = node_scopes(model)
        for node in model.graph.node:
            if scheme == "bevfusion":
                # prepare_for_profiling renames custom calls "<op>__site<i>"; the op type decides.
                op_type = _SITE.sub("", node.op_type)
                module: str | None = module_of(scopes.get(node.name) or node.name, op_type)
                module = None if module == OTHER else module
            else:
                scope = scopes.get(node.name, "")
                module = scope_module(node.name, depth) or torch_scope_module(scope, depth)
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
        lead = name
        while "/" in lead:  # a fused kernel "<node>/<Fusion>" belongs to its leading node
            lead = lead.rpartition("/")[0]
            if lead in self.by_node:
                return self.by_node[lead]
        site = _INLINED.match(name)
        if site and int(site.group(1)) < len(self.model.graph.node):
            return self.by_node.get(self.model.graph.node[int(site.group(1))].name, OTHER)
        if self.scheme == "bevfusion":
            if name not in self._cache:
                from sparsefuse.targets.backends.ort_profiling import attach_scopes
                from sparsefuse.targets.profiler import NodeTime

                self._cache[name] = attach_scopes([NodeTime(name, "", 0.0)], self.model)[0].module
            return self._cache[name]
        tokens = set(_SPLIT.split(name))
        for module in self.modules:
            if module.split("/")[0] in tokens:
                return module
        return OTHER


def prepare_for_profiling(model: onnx.ModelProto) -> onnx.ModelProto:
    """One named copy of each custom-op function per call site, so ORT's inlined kernels
    ("_inlfunc_<fn>__site<i>_...") name the node they came from (for every scheme: the custom ops
    are most of a LiDAR model's time). Same semantics."""
    from sparsefuse.targets.backends.ort_profiling import name_function_bodies

    return name_function_bodies(model)


def per_run_module_ms(
    events: Iterable[dict], module_map: ModuleMap, skip_runs: int
) -> list[dict[str, float]]:
    """Per model run (after the first ``skip_runs``), the summed kernel time (ms) per module.

    events: the ORT profiler's chrome-trace list. Node events are assigned to the model_run
    whose [ts, ts+dur] interval contains them.
    """
    events = list(events)
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    runs = runs[skip_runs:]
    out: list[dict[str, float]] = [dict.fromkeys(module_map.modules, 0.0) for _ in runs]
    starts = [r[0] for r in runs]
    kernels = sorted(
        (e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    per_run: list[list[tuple[str, float]]] = [[] for _ in runs]
    for e in kernels:
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if 0 <= i < len(runs) and e["ts"] <= runs[i][1]:
            per_run[i].append((module_map.module_of(e["name"]), e["dur"] / 1000.0))
    for i, seq in enumerate(per_run):
        for module, ms in _inherit_neighbours(seq):
            out[i][module] = out[i].get(module, 0.0) + ms
    return out


def _inherit_neighbours(seq: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Optimizer-inserted kernels (layout reorders, ``ReorderOutput_token_7``) carry no module
    name: they take the module of the kernel before them (or after, at the start of a run)."""
    named = [m for m, _ in seq if m != OTHER]
    if not named:
        return seq
    out, last = [], named[0]
    for module, ms in seq:
        if module == OTHER:
            module = last
        last = module
        out.append((module, ms))
    return out
