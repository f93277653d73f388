"""Measured profiles from files written on the target: trtexec --exportProfile / --exportTimes.

trtexec --exportProfile writes ``[{"count": N}, {"name", "timeMs", "averageMs", "medianMs",
"percentage"}, ...]`` (per-layer, per-inference averages in ms); --exportTimes writes one record
per inference with "latencyMs" (or "computeMs"). TensorRT layer names are the ONNX node names,
joined with " + " when fused and wrapped as "{ForeignNode[first...last]}" by Myelin; a layer is
attributed to the first ONNX node its name mentions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends.trtexec import TRTEXEC_PROFILE, TRTEXEC_TIMES
from sparsefuse.targets.modules import module_of, node_scopes
from sparsefuse.targets.profiler import NodeTime, Profile

_TOKEN = re.compile(r"[^\s\[\]{}+,]+")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparsefuseError(
            f"{path} not found", "run profile_engine.sh on the target and copy its folder back"
        ) from None
    except json.JSONDecodeError as exc:
        raise SparsefuseError(f"{path} is not valid JSON: {exc}", "re-run profile_engine.sh") from None


def parse_trtexec_layers(data: Any) -> list[tuple[str, float]]:
    """[(layer name, average ms per inference)] from an --exportProfile document."""
    if not isinstance(data, list):
        raise SparsefuseError(
            "trtexec profile JSON must be a list", "pass the file written by --exportProfile"
        )
    layers = []
    for entry in data:
        if not isinstance(entry, dict) or "name" not in entry:
            continue
        if "averageMs" in entry:
            ms = float(entry["averageMs"])
        elif "timeMs" in entry and data and isinstance(data[0], dict) and data[0].get("count"):
            ms = float(entry["timeMs"]) / float(data[0]["count"])
        else:
            continue
        layers.append((str(entry["name"]), ms))
    return layers


def parse_trtexec_times(data: Any) -> list[float]:
    """Per-inference latency [ms] from an --exportTimes document."""
    if not isinstance(data, list):
        raise SparsefuseError("trtexec times JSON must be a list", "pass the file written by --exportTimes")
    key = "latencyMs" if data and "latencyMs" in data[0] else "computeMs"
    return [float(r[key]) for r in data if isinstance(r, dict) and key in r]


def _attribute(layer: str, scopes: dict[str, str], op_types: dict[str, str]) -> tuple[str, str, str]:
    """(ONNX node name, op type, scope) for a TensorRT layer name ("" when none is mentioned)."""
    for token in _TOKEN.findall(layer.replace("...", " ")):
        if token in op_types:
            return token, op_types[token], scopes.get(token, "")
    return "", "", ""


def import_trtexec(
    folder_or_profile: str | os.PathLike[str],
    target_tag: str,
    onnx_model: Any = None,
    times_path: str | os.PathLike[str] | None = None,
    lidar_points: int = 0,
    device: str = "",
    tensorrt_version: str = "",
) -> Profile:
    """A measured Profile from trtexec exports (a recipe folder, or the profile JSON path).

    ``onnx_model`` (the lowered ONNX) maps layers to ONNX nodes and torch module paths.
    """
    path = Path(folder_or_profile)
    profile_path = path / TRTEXEC_PROFILE if path.is_dir() else path
    times = Path(times_path) if times_path else profile_path.parent / TRTEXEC_TIMES
    layers = parse_trtexec_layers(_read_json(profile_path))
    samples = parse_trtexec_times(_read_json(times)) if times.exists() else []
    if not samples:
        raise SparsefuseError(
            f"no per-inference times next to {profile_path}", "keep times_trtexec.json with it"
        )
    scopes: dict[str, str] = {}
    op_types: dict[str, str] = {}
    if onnx_model is not None:
        import onnx

        model = (
            onnx.load(str(onnx_model), load_external_data=False)
            if isinstance(onnx_model, (str, Path))
            else onnx_model
        )
        scopes = node_scopes(model)
        op_types = {n.name: n.op_type for n in model.graph.node}
    per_node = []
    for layer, ms in layers:
        node, op_type, scope = _attribute(layer, scopes, op_types)
        module = module_of(scope or node or layer, op_type)
        per_node.append(NodeTime(node or layer, op_type, ms, module, scope))
    versions = (("tensorrt", tensorrt_version),) if tensorrt_version else ()
    notes = ["per-layer times from trtexec's separate profile run; end-to-end samples from --exportTimes"]
    build_log = profile_path.parent / "build.log"
    if build_log.is_file():
        from sparsefuse.targets.backends.tensorrt import parse_sparsity_log

        eligible, picked = parse_sparsity_log(build_log.read_text(errors="replace"))
        notes.append(
            f"2:4 sparsity: {len(eligible)} layers eligible, {len(picked)} picked sparse kernels"
            + (f" ({', '.join(picked)})" if picked else "")
        )
    return Profile(
        label="measured",
        target=target_tag,
        backend="tensorrt",
        device=device or "target GPU (see device_state.txt)",
        versions=versions + (("source", "trtexec --exportProfile/--exportTimes"),),
        samples_ms=tuple(samples),
        per_node=tuple(per_node),
        lidar_points=(lidar_points,) * len(samples) if lidar_points else (),
        notes=tuple(notes),
    )
