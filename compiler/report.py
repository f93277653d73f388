"""OUT/report.md: the human summary of one compile, written from the artifacts in OUT.

Sections: config, stage timings, verify table, latency (labelled measured / estimated), per-module
table, links to the PNGs, the sparsity summary (when a sparsity stage ran) and the engine recipes
(TensorRT targets).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sparsefuse.atomic import write_text


def write_report(out: Path, config: Any, records: Sequence[Any]) -> Path:
    """Write OUT/report.md from ``config`` (CompileConfig), the stage records so far and the
    artifacts (verify.json, profile.json, sparsity/plan.json, engine/<target>/)."""
    verify = _load(out / "verify.json")
    profile = _load(out / "profile.json")
    plan = _load(out / "sparsity" / "plan.json") if config.sparsity is not None else None
    precision = _load(out / "precision" / "report.json") if getattr(config, "precision", None) else None
    sections = [
        _config_section(config),
        _conversion_section(_load(out / "export" / "conversion.json")),
        _stages_section(records),
        _verify_section(verify),
        _latency_section(profile),
        _modules_section(profile),
        _sparsity_section(plan, out) if plan is not None else "",
        _precision_section(precision) if precision is not None else "",
        _engine_section(out, records),
    ]
    return write_text(out / "report.md", "\n".join(s for s in sections if s))


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def _config_section(config: Any) -> str:
    if config.is_preset:
        rows = [("model", config.model), ("target", config.target), ("seed", config.seed),
                ("rig", config.rig or "preset built-in"),
                ("weights", config.weights or f"seeded init (seed {config.seed})"),
                ("verify frames", config.verify_frames)]
    else:
        rows = [("model", config.model), ("target", config.target),
                ("frames", config.frames or "given to the Python API"),
                ("weights", config.weights or "the model's own"), ("verify frames", config.verify_frames)]
    if config.sparsity is not None:
        s = config.sparsity
        rows.append(("sparsity", f"budget {s.budget_kind}={s.budget:g}, allocator {s.allocator}, "
                                 f"pattern {s.pattern}, calib {s.calib}, levels {s.levels}"))
    return "# sparsefuse compile report\n\n" + _table(("setting", "value"), rows)


def _stages_section(records: Sequence[Any]) -> str:
    rows = [(r.name, f"{r.wall_s:.2f}", "cached" if r.cached else "ran") for r in records]
    total = sum(r.wall_s for r in records)
    return "## Stages\n\n" + _table(("stage", "wall [s]", ""), rows) + f"\nTotal {total:.1f} s.\n"


def _precision_section(report: dict[str, Any]) -> str:
    """What the precision stage kept in FP32 / float and why (OUT/precision/report.json)."""
    kept = report.get("islands") or list(report.get("kept_float", {}))
    what = "FP32 islands" if report.get("precision") == "fp16" else "activations kept float"
    errors = ", ".join(f"{k} {v:.3g}" if isinstance(v, int | float) else f"{k} {v}"
                       for k, v in report.get("calibration_error", {}).items())
    calibrator = report.get("calibration", {}).get("calibrator")
    rows = [(n, i.get("op"), i.get("precision"), i.get("reason"))
            for n, i in report.get("custom_ops", {}).items()]
    return (f"## Precision: {report.get('precision')}\n\n"
            + (f"Calibrator: {calibrator}. " if calibrator else "")
            + f"{what}: {', '.join(kept) or 'none'}. Worst error on the {report.get('calibration_frames')} "
              f"calibration frames (fraction of each output's range): {errors}. Details: "
              "precision/report.json.\n\n"
            + (_table(("custom node", "op", "runs", "why"), rows) if rows else ""))


def _rule_text(rule: dict[str, Any]) -> str:
    """The tolerance rule verify applied: float32, or the precision stage's (docs/tolerances.md)."""
    applied = rule.get("applied", "float32")
    if applied == "float32":
        return f"float32 {rule.get('float32', '')}"
    return f"{applied} graph, per-output bounds from OUT/precision/report.json (docs/tolerances.md)"


def _verify_section(verify: dict[str, Any] | None) -> str:
    if verify is None:
        return "## Verify\n\nverify.json is missing.\n"
    verdict = "PASS" if verify.get("pass") else "FAIL"
    head = (f"## Verify: {verdict}\n\nChecked: {verify.get('checked', 'the lowered model')}.\n"
            f"Reference: {verify.get('reference', 'the PyTorch model')}. "
            f"Rule: {_rule_text(verify.get('rule', {}))}; integers exact.\n\n")
    rows = []
    for index, frame in enumerate(verify.get("frames", [])):
        which = f"seed {frame.get('seed')}" if "seed" in frame else f"frames[{frame.get('frame')}]"
        sizes = frame.get("dynamic") or {"points": frame.get("num_points")}
        for name, check in frame.get("outputs", {}).items():
            rows.append((index, which, ", ".join(f"{k} {v}" for k, v in sizes.items()), name,
                         _number(check['max_abs']), _number(check['tolerance']),
                         "pass" if check["pass"] else "FAIL"))
    command = verify.get("polygraphy", {}).get("command")
    tail = f"\nReproduce from OUT: `{command}`\n" if command else ""
    conversion = verify.get("conversion")
    if conversion:
        worst = ", ".join(f"{k} {_number(v['max_abs'])}" for k, v in conversion.get("outputs", {}).items())
        verdict = "pass" if conversion.get("pass") else "FAIL"
        tail += (f"\nConversion alone (the converted PyTorch model against the original): {verdict}; "
                 f"worst max abs error per output: {worst}.\n")
    header = ("#", "frame", "dynamic sizes", "output", "max abs err", "tolerance", "")
    files = ("\n`#` is the index of the frame's files in verify/frames/ (`<#>_inputs.json`, "
             "`<#>_golden.json`).\n")
    return head + _table(header, rows) + files + tail


def _conversion_section(conversion: dict[str, Any] | None) -> str:
    """What the conversion pass rewrote (user models; presets are written in our ops)."""
    if not conversion or (not conversion.get("converted") and not conversion.get("warnings")):
        return ""
    rows = [(f"`{r['path'] or '(root)'}`", r["source"], r["target"], r.get("note", ""))
            for r in conversion.get("converted", [])]
    kept = ", ".join(f"{k} x{n}" for k, n in sorted(conversion.get("kept", {}).items()))
    warnings = "".join(f"\n**warning:** {w}\n" for w in conversion.get("warnings", []))
    table = _table(("path", "was", "now", "note"), rows) if rows else "Nothing needed converting.\n"
    return ("## Conversion\n\n" + table
            + f"\nKept as plain torch: {kept or 'nothing'}.\n" + warnings)


def _latency_section(profile: dict[str, Any] | None) -> str:
    if profile is None:
        return "## Latency\n\nprofile.json is missing.\n"
    label = profile.get("label", "?")
    latency = profile.get("latency_ms", {})
    if label == "measured":
        stats = ", ".join(f"{k} {_ms(latency.get(k))} ms" for k in ("median", "p90", "p99"))
        body = (f"**{label}** on {profile.get('device') or 'this machine'} ({profile.get('backend')}): "
                f"{stats} over {latency.get('runs')} runs; LiDAR points per frame "
                f"{sorted(set(profile.get('lidar_points_per_frame', [])))}.\n")
    else:
        model = profile.get("cost_model", {})
        body = (f"**{label}** by the cost model {model.get('name')} {model.get('version')} for "
                f"{profile.get('target')}: total {_ms(latency.get('total'))} ms. Not a measurement: run "
                "the engine recipes on the target for measured numbers.\n")
    return f"## Latency ({label})\n\n{body}\n![profile](profile.png)\n"


def _modules_section(profile: dict[str, Any] | None) -> str:
    modules = (profile or {}).get("per_module_ms") or {}
    if not modules:
        return ""
    label = profile.get("label", "?")
    rows = [(name, _ms(ms)) for name, ms in modules.items()]
    total = sum(v for v in modules.values() if isinstance(v, int | float))
    median = (profile.get("latency_ms") or {}).get("median")
    note = ""
    if label == "measured" and isinstance(median, int | float) and total > median:
        # ORT's per-node profile times every node with its own timer, in a separate run, and nodes
        # run on several threads at once: the parts add up to more than the wall-clock whole.
        note = (f"\nThe modules sum to {_ms(total)} ms, more than the {_ms(median)} ms end-to-end median: "
                "they are timed per node in a separate profiling run (with its overhead), and nodes "
                "overlap on parallel threads. Read them as shares, not as a breakdown of the median.\n")
    return f"## Per module ({label})\n\n" + _table(("module", "ms per inference"), rows) + note


def _sparsity_section(plan: dict[str, Any], out: Path) -> str:
    head = (f"## Sparsity\n\nAllocator {plan.get('allocator')}, pattern {plan.get('pattern')}, budget "
            f"{plan.get('budget_kind')} {plan.get('budget_fraction')}: achieved {plan.get('budget_kind')} "
            f"fraction {plan.get('achieved_fraction', 0):.4f}, parameter sparsity "
            f"{plan.get('achieved_sparsity', 0):.4f} over {len(plan.get('layers', []))} prunable layers. "
            "Verify compares against the pruned PyTorch model. "
            "Plan: [sparsity/plan.json](sparsity/plan.json).\n\n")
    rows = [(layer["name"], layer["modality"], layer["pattern"], f"{layer['level']:.2f}",
             f"{layer['params_kept']}/{layer['params']}") for layer in plan.get("layers", [])]
    plots = sorted(p.name for p in (out / "sparsity").glob("*.png"))
    links = "".join(f"\n![{name}](sparsity/{name})\n" for name in plots)
    return head + _table(("layer", "modality", "pattern", "level", "params kept"), rows) + links


def _engine_section(out: Path, records: Sequence[Any]) -> str:
    build = next((r for r in records if r.name == "build"), None)
    if build is None or build.details.get("backend") != "tensorrt":
        return ""
    built = build.details.get("built", {})
    engine_dir = next((rel.split("/")[0] + "/" + rel.split("/")[1] for rel in build.outputs
                       if rel.startswith("engine/")), "engine/<target>")
    engine = built.get("engine")
    state = (f"engine built: `{engine_dir}/{engine}`" if engine else
             "no TensorRT on this machine: no engine was built")
    return (f"## Engine\n\n{state}. On the target: `bash {engine_dir}/{built.get('build_script')}` then "
            f"`bash {engine_dir}/{built.get('profile_script')}`.\n")


def _number(value: Any) -> str:
    """A JSON number for a table; null is how sparsefuse.atomic.write_json writes NaN / infinity."""
    return "not finite" if value is None else f"{value:.3g}"
