"""ONNX Runtime's profiler output -> per-node times with torch module paths.

ORT inlines model-local functions (our custom ops' bodies) and renames nodes when it fuses them;
these helpers give every profiled kernel back to the graph node and module it came from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from sparsefuse.targets.modules import module_of, node_scopes
from sparsefuse.targets.profiler import NodeTime

_INLINED = re.compile(r"^_inlfunc_.+?__site(\d+)_")


def attach_scopes(nodes: Sequence[NodeTime], model: Any) -> list[NodeTime]:
    """Give each profiled node its torch module path and module.

    Inlined function-body nodes ("_inlfunc_<fn>__site<i>_...") belong to call node i: they take
    its scope and its custom op type decides the module. Fused nodes named "<node>/<Fusion>" are
    looked up by their leading part.
    """
    scopes = node_scopes(model)
    graph_nodes = model.graph.node
    out = []
    for node in nodes:
        match = _INLINED.match(node.name)
        if match and int(match.group(1)) < len(graph_nodes):
            call = graph_nodes[int(match.group(1))]
            scope = scopes.get(call.name, call.name)
            out.append(replace(node, scope=scope, module=module_of(scope, call.op_type)))
            continue
        scope, name = "", node.name
        while name and not scope:
            scope = scopes.get(name, "")
            name = name.rpartition("/")[0]
        out.append(replace(node, scope=scope, module=module_of(scope or node.name, node.op_type)))
    return out


def name_function_bodies(model: Any) -> Any:
    """Give each call of a model-local function its own copy, with body nodes named
    "<call node name>/<op>_<i>", so ORT's inlined node names ("_inlfunc_<fn>_<body node>")
    keep the call site's module path. Returns a new ModelProto; semantics are unchanged."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    functions = {(f.domain, f.name): f for f in model.functions}
    if not functions:
        return model
    copies = []
    for index, node in enumerate(model.graph.node):
        fn = functions.get((node.domain, node.op_type))
        if fn is None:
            continue
        site = onnx.FunctionProto.FromString(fn.SerializeToString())
        site.name = f"{fn.name}__site{index}"
        call_name = node.name or f"{fn.name}_{index}"
        for j, body in enumerate(site.node):
            body.name = f"{call_name}/{body.op_type}_{j}"
        node.op_type = site.name
        copies.append(site)
    used = {(n.domain, n.op_type) for n in model.graph.node}
    kept = [f for f in model.functions if (f.domain, f.name) in used or _called_by(f, copies)]
    del model.functions[:]
    model.functions.extend(kept + copies)
    return model


def _called_by(fn: Any, callers: Sequence[Any]) -> bool:
    return any(n.domain == fn.domain and n.op_type == fn.name for c in callers for n in c.node)


def fold_to_graph_nodes(nodes: Sequence[NodeTime], model: Any) -> dict[str, float]:
    """Profiled times summed per node of ``model``'s graph [ms]: inlined function bodies go to
    their call node, fused kernels ("<node>/<Fusion>") to their leading node; kernels ORT
    created itself (layout reorders) are left out."""
    graph_nodes = model.graph.node
    names = {n.name for n in graph_nodes}
    totals: dict[str, float] = {}
    for node in nodes:
        match = _INLINED.match(node.name)
        if match and int(match.group(1)) < len(graph_nodes):
            owner = graph_nodes[int(match.group(1))].name
        else:
            owner = node.name
            while owner and owner not in names:
                owner = owner.rpartition("/")[0]
        if owner:
            totals[owner] = totals.get(owner, 0.0) + node.time_ms
    return totals


def _load_events(path: str | os.PathLike[str]) -> list[dict]:
    with open(path) as handle:
        data = json.load(handle)
    return data if isinstance(data, list) else data.get("traceEvents", [])


def parse_ort_profile(path: str | os.PathLike[str], runs: int, skip_runs: int = 1) -> list[NodeTime]:
    """Median over runs of each node's kernel time per run [ms], from an ORT profiling JSON.

    ORT logs one "<node>_kernel_time" event per node execution (cat "Node", dur in µs) and one
    "model_run" event per run; events are assigned to the run whose interval holds them. The
    first ``skip_runs`` runs are warm-up and are dropped. Without run events, all node events
    count as ``runs`` runs (mean).
    """
    events = _load_events(path)
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kept = spans[skip_runs:] if len(spans) > skip_runs else spans
    per_run: dict[str, list[float]] = {}
    op_types: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        ts = event.get("ts", 0)
        if spans:
            index = next((i for i, (a, b) in enumerate(kept) if a <= ts <= b), None)
            if index is None:
                continue
        else:
            index = 0
        node = name[: -len("_kernel_time")]
        if node not in per_run:
            per_run[node] = [0.0] * max(1, len(kept))
            op_types[node] = str(event.get("args", {}).get("op_name", ""))
        per_run[node][index] += float(event["dur"]) / 1000.0
    if not spans:
        return [NodeTime(n, op_types[n], v[0] / max(1, runs)) for n, v in per_run.items()]
    return [NodeTime(n, op_types[n], float(np.median(v))) for n, v in per_run.items()]
