"""``sparsefuse regress`` from options to exit code: gather samples, gate, report, update.

Three ways to get the candidate and baseline samples:
- ``--profile P.json --baseline B.json``: a stored profile against a stored baseline entry;
- ``--onnx M.onnx --baseline B.json``: measure now (with the reference kernel), compare with the
  stored entry as a ratio of ratios;
- ``--onnx NEW.onnx --baseline-onnx OLD.onnx``: measure both now, interleaved, paired bootstrap.
Exit codes: 0 pass, 1 regression (latency or accuracy), 2 usage or error (SparsefuseError).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.atomic import sha256_file, write_json
from sparsefuse.compiler.regress import report
from sparsefuse.compiler.regress.accuracy import (
    MetricCheck,
    OutputCheck,
    Tolerance,
    check_metric,
    check_outputs,
    tolerance_from_json,
)
from sparsefuse.compiler.regress.baseline import BaselineKey, load_entries, select_entry, update_baseline
from sparsefuse.compiler.regress.gate import GateConfig, LatencyVerdict, compare
from sparsefuse.compiler.regress.measure import MeasureConfig, load_cpu_model, make_feeds, measure_models
from sparsefuse.compiler.regress.samples import LatencySamples, read_json, samples_from_json
from sparsefuse.errors import SparsefuseError
from sparsefuse.layout import lowered_rel


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    reference: float
    tolerance: float


@dataclass(frozen=True)
class RegressOptions:
    baseline: Path | None = None
    profile: Path | None = None
    onnx: Path | None = None
    baseline_onnx: Path | None = None
    inputs: Path | None = None
    measure: MeasureConfig = MeasureConfig()
    gate: GateConfig = GateConfig()
    target: str | None = None
    precision: str | None = None
    model_hash: str | None = None
    report_dir: Path = Path(".")
    update_baseline: bool = False
    golden: Path | None = None
    outputs: Path | None = None
    tolerances: Path | None = None
    metrics: tuple[Metric, ...] = ()
    plot: bool = True  # regress.png (matplotlib, about a second)


@dataclass(frozen=True)
class RegressResult:
    exit_code: int
    verdict: LatencyVerdict | None
    outputs: tuple[OutputCheck, ...]
    metrics: tuple[MetricCheck, ...]
    reports: dict[str, Path]
    message: str


def _validate(opts: RegressOptions) -> None:
    if (opts.profile is None) == (opts.onnx is None):
        raise SparsefuseError(
            "give exactly one candidate: --profile P.json or --onnx M.onnx", "see `sparsefuse regress --help`"
        )
    if opts.baseline_onnx is not None and opts.onnx is None:
        raise SparsefuseError(
            "--baseline-onnx needs --onnx (both are measured, interleaved)", "add --onnx CANDIDATE.onnx"
        )
    if opts.baseline is None and opts.baseline_onnx is None:
        raise SparsefuseError(
            "no baseline: pass --baseline B.json or --baseline-onnx OLD.onnx",
            "record a baseline with --baseline B.json --update-baseline",
        )
    if opts.golden is not None and opts.outputs is None and (opts.onnx is None or opts.inputs is None):
        raise SparsefuseError(
            "--golden needs the candidate's outputs: --outputs OUT.npz, or --onnx with --inputs",
            "pass the golden inputs with --inputs so regress can run the model",
        )


def compile_record_near(path: Path) -> dict[str, Any] | None:
    """compile.json of the compile directory that holds ``path`` (OUT/profile.json, OUT/lowered/x)."""
    for parent in (path.parent, path.parent.parent):
        record = parent / "compile.json"
        if record.is_file():
            return read_json(record, "compile record")
    return None


def source_model_hash(record: dict[str, Any]) -> str:
    """Hash of the source model of a compile: preset, weight seed and rig (not the compiled graph,
    so a recompile with a changed compiler stays comparable with the old baseline)."""
    config = record.get("config", {})
    blob = {
        "model": config.get("model"),
        "seed": config.get("seed"),
        "rig": record.get("inputs", {}).get("rig"),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _shapes(doc: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(doc, dict):
        return ()
    return tuple(sorted((str(k), tuple(int(d) for d in v)) for k, v in doc.items()))


def key_for_profile(doc: dict[str, Any], path: Path, opts: RegressOptions) -> BaselineKey:
    fields = dict(doc.get("key", {})) if isinstance(doc.get("key"), dict) else {}
    record = compile_record_near(path)
    backend = str(fields.get("backend", doc.get("backend", "")))
    versions = doc.get("versions", {}) if isinstance(doc.get("versions"), dict) else {}
    model_hash = (
        opts.model_hash
        or fields.get("model_hash")
        or doc.get("model_hash")
        or (source_model_hash(record) if record else None)
    )
    if not model_hash:
        raise SparsefuseError(
            f"profile {path} names no model hash and has no compile.json beside it",
            "pass --model-hash (any stable id of the source model)",
        )
    return BaselineKey(
        model_hash=str(model_hash),
        target=opts.target or str(fields.get("target", doc.get("target", "")) or "unknown"),
        backend=backend or "unknown",
        backend_version=str(
            fields.get("backend_version", doc.get("backend_version", versions.get(backend, "")))
        ),
        precision=opts.precision or str(fields.get("precision", doc.get("precision", "fp32"))),
        input_shapes=_shapes(fields.get("input_shapes", doc.get("input_shapes", {}))),
    )


def key_for_onnx(path: Path, feeds: dict[str, np.ndarray], opts: RegressOptions) -> BaselineKey:
    import onnxruntime as ort

    record = compile_record_near(path)
    model_hash = opts.model_hash or (source_model_hash(record) if record else sha256_file(path))
    target = opts.target or (record or {}).get("config", {}).get("target") or "cpu"
    return BaselineKey(
        model_hash=model_hash,
        target=str(target),
        backend="onnxruntime",
        backend_version=ort.__version__,
        precision=opts.precision or "fp32",
        input_shapes=tuple(sorted((n, tuple(int(d) for d in a.shape)) for n, a in feeds.items())),
    )


def _candidate_outputs(
    opts: RegressOptions, model: Any, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    if opts.outputs is not None:
        with np.load(opts.outputs) as data:
            return {k: data[k] for k in data.files}
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _accuracy(opts: RegressOptions, model: Any, feeds: dict[str, np.ndarray]) -> tuple[OutputCheck, ...]:
    if opts.golden is None:
        return ()
    with np.load(opts.golden) as data:
        golden = {k: data[k] for k in data.files}
    tolerances: dict[str, Tolerance] = {}
    if opts.tolerances is not None:
        doc = read_json(opts.tolerances, "tolerances")
        precision = opts.precision or "fp32"
        # A bundle's golden/tolerances.json has one section per precision.
        section = doc.get(precision, doc) if isinstance(doc.get(precision), dict) else doc
        tolerances = {k: tolerance_from_json(v) for k, v in section.items() if isinstance(v, dict)}
    got = _candidate_outputs(opts, model, feeds)
    return tuple(check_outputs(got, golden, tolerances, opts.precision or "fp32"))


def resolve_model(path: Path, target: str | None) -> tuple[Path, Any]:
    """(ONNX file, verify frames or None). A compile directory OUT stands for its lowered model
    OUT/lowered/<target>.onnx, fed by the first of its verify frames (OUT/verify/inputs.json)."""
    if not path.is_dir():
        return path, None
    record = compile_record_near(path / "compile.json")
    if record is None:
        raise SparsefuseError(f"{path} is a folder but not a compile directory", "pass an ONNX file or OUT")
    tag = target or record.get("config", {}).get("target") or "cpu"
    onnx_path = path / lowered_rel(tag)
    if not onnx_path.is_file():
        raise SparsefuseError(
            f"{path} has no lowered model for target {tag}", "compile for it, or pass --onnx"
        )
    inputs = path / "verify" / "inputs.json"
    if not inputs.is_file():
        return onnx_path, None
    from sparsefuse.compiler.bundle import read_polygraphy_feeds

    return onnx_path, read_polygraphy_feeds(inputs)


def gather(
    opts: RegressOptions,
) -> tuple[LatencySamples | None, LatencySamples, BaselineKey, bool, Any, dict]:
    """(baseline samples or None when the stored baseline lacks the key's file, candidate samples,
    key, paired, candidate model, feeds)."""
    model, feeds = None, {}
    if opts.profile is not None:
        doc = read_json(opts.profile, "profile")
        candidate = samples_from_json(doc, f"profile {opts.profile}")
        key = key_for_profile(doc, opts.profile, opts)
    else:
        onnx_path, frames = resolve_model(opts.onnx, opts.target)
        model = load_cpu_model(onnx_path)
        feeds = make_feeds(model, opts.inputs)
        if opts.inputs is None and frames is not None:
            feeds = {name: frames[0][name] for name in feeds if name in frames[0]} or feeds
        key = key_for_onnx(onnx_path, feeds, opts)
        if opts.baseline_onnx is not None:
            base_model = load_cpu_model(resolve_model(opts.baseline_onnx, opts.target)[0])
            got = measure_models({"baseline": base_model, "candidate": model}, feeds, opts.measure)
            return got["baseline"], got["candidate"], key, True, model, feeds
        candidate = measure_models({"candidate": model}, feeds, opts.measure)["candidate"]
    if opts.baseline is None or (opts.update_baseline and not opts.baseline.exists()):
        return None, candidate, key, False, model, feeds
    entry = select_entry(load_entries(opts.baseline), key, opts.baseline)
    return entry.samples, candidate, key, False, model, feeds


def run_regress(opts: RegressOptions) -> RegressResult:
    _validate(opts)
    baseline, candidate, key, paired, model, feeds = gather(opts)
    if baseline is None:
        path = update_baseline(opts.baseline, key, candidate)
        return RegressResult(
            0,
            None,
            (),
            (),
            {"baseline": path},
            f"baseline created: {path} ({key.describe()}, {len(candidate.total_ms)} runs)",
        )
    verdict = compare(baseline, candidate, opts.gate, paired=paired)
    outputs = _accuracy(opts, model, feeds)
    metrics = tuple(check_metric(m.name, m.value, m.reference, m.tolerance) for m in opts.metrics)
    md = report.markdown(verdict, baseline, candidate, list(outputs), list(metrics), title=key.describe())
    png = report.distribution_png(baseline, candidate, verdict) if opts.plot else None
    reports = report.write_reports(
        opts.report_dir, md, report.junit_xml(verdict, list(outputs), list(metrics)), png
    )
    failed = verdict.regressed or any(not c.passed for c in outputs) or any(not m.passed for m in metrics)
    reports["json"] = write_json(
        opts.report_dir / "regress.json",
        {
            "schema_version": 1,
            "pass": not failed,
            "key": key.to_json(),
            "mode": verdict.mode,
            "threshold": opts.gate.threshold,
            "confidence": opts.gate.confidence,
            "total": verdict.total.ci.to_json() if verdict.total.ci else None,
            "modules": {
                m.name: {
                    "ci": m.ci.to_json() if m.ci else None,
                    "regressed": m.regressed,
                    "delta_ms": m.delta_ms,
                    "note": m.note,
                }
                for m in verdict.modules
            },
            "culprits": [m.name for m in verdict.culprits()],
            "accuracy": [
                {"name": c.name, "pass": c.passed, "max_abs_err": c.max_abs_err, "allowed": c.allowed}
                for c in outputs
            ],
            "metrics": [
                {
                    "name": m.name,
                    "pass": m.passed,
                    "value": m.value,
                    "reference": m.reference,
                    "tolerance": m.tolerance,
                }
                for m in metrics
            ],
            "label": "measured",
        },
    )
    message = _summary(verdict, outputs, metrics, failed)
    if opts.update_baseline and opts.baseline is not None:
        reports["baseline"] = update_baseline(opts.baseline, key, candidate)
        message += f"\nbaseline updated: {opts.baseline}"
        return RegressResult(0, verdict, outputs, metrics, reports, message)
    return RegressResult(1 if failed else 0, verdict, outputs, metrics, reports, message)


def _summary(
    verdict: LatencyVerdict, outputs: tuple[OutputCheck, ...], metrics: tuple[MetricCheck, ...], failed: bool
) -> str:
    ci = verdict.total.ci
    line = (
        f"{'FAIL' if failed else 'PASS'}: total {ci.slowdown_pct:+.1f}% "
        f"(CI {100 * (ci.low - 1):+.1f}%..{100 * (ci.high - 1):+.1f}%, threshold "
        f"{100 * verdict.config.threshold:.1f}% at {100 * verdict.config.confidence:.0f}%, {verdict.mode})"
    )
    culprits = verdict.culprits()
    if culprits:
        line += "; slower modules: " + ", ".join(f"{m.name} {m.ci.slowdown_pct:+.0f}%" for m in culprits)
    bad = [c.name for c in outputs if not c.passed] + [m.name for m in metrics if not m.passed]
    if bad:
        line += "; accuracy failed: " + ", ".join(bad)
    return line
