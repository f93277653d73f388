"""``sparsefuse regress`` from options to exit code: gather samples, gate, report, update.

Three ways to get the candidate and baseline samples:
- ``--profile P.json --baseline B.json``: a stored profile against a stored baseline entry;
- ``--onnx M.onnx --baseline B.json``: measure now (with the reference kernel), compare with the
  stored entry as a ratio of ratios;
- ``--onnx NEW.onnx --baseline-onnx OLD.onnx``: measure both now, interleaved, paired bootstrap.
Measured modes feed the frames ``inputs.resolve_frames`` picks (verify frames, synthetic preset
frames or ``--inputs``) and say which.
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
from sparsefuse.compiler.regress.inputs import Frames, check_fits, resolve_frames
from sparsefuse.compiler.regress.measure import MeasureConfig, load_cpu_model, measure_models
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
    inputs: str = ""  # which frames were measured ("" for a stored --profile)


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
    # Files that must exist, checked before minutes of measuring.
    if opts.baseline is not None and not opts.update_baseline and not opts.baseline.is_file():
        raise SparsefuseError(
            f"baseline {opts.baseline} does not exist",
            "record one first with --update-baseline, or compare interleaved with --baseline-onnx OLD.onnx",
        )
    paths = {"--profile": opts.profile, "--onnx": opts.onnx, "--baseline-onnx": opts.baseline_onnx,
             "--inputs": opts.inputs, "--golden": opts.golden, "--outputs": opts.outputs,
             "--tolerances": opts.tolerances}
    for flag, path in paths.items():
        if path is not None and not path.exists():
            raise SparsefuseError(f"{flag} {path} does not exist", "check the path")


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


def key_for_onnx(path: Path, frames: Frames, opts: RegressOptions) -> BaselineKey:
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
        input_shapes=frames.key_shapes(),
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


def resolve_model(path: Path, target: str | None) -> Path:
    """The ONNX file ``path`` stands for: itself, or for a compile directory OUT its lowered model
    OUT/lowered/<target>.onnx (whose verify frames ``inputs.resolve_frames`` finds)."""
    if not path.is_dir():
        return path
    record = compile_record_near(path / "compile.json")
    if record is None:
        raise SparsefuseError(f"{path} is a folder but not a compile directory", "pass an ONNX file or OUT")
    tag = target or record.get("config", {}).get("target") or "cpu"
    if str(tag).endswith(".toml"):  # a compile for a user target TOML: its files go by the TOML's tag
        from sparsefuse.targets.registry import get_target

        tag = get_target(tag).tag
    onnx_path = path / lowered_rel(tag)
    if not onnx_path.is_file():
        raise SparsefuseError(
            f"{path} has no lowered model for target {tag}", "compile for it, or pass --onnx"
        )
    return onnx_path


@dataclass(frozen=True)
class Gathered:
    """Samples to compare and what produced them."""

    baseline: LatencySamples | None  # None: the stored baseline has no file yet (it is created)
    candidate: LatencySamples
    key: BaselineKey
    paired: bool
    model: Any = None  # the candidate ONNX (measured modes)
    frames: Frames | None = None


def _stored_entry(opts: RegressOptions, key: BaselineKey) -> LatencySamples | None:
    if opts.baseline is None or (opts.update_baseline and not opts.baseline.exists()):
        return None
    entries = load_entries(opts.baseline)
    if opts.update_baseline and all(e.key != key for e in entries):
        return None  # a new key for an existing file: recorded, there is nothing to compare with yet
    return select_entry(entries, key, opts.baseline).samples


def gather(opts: RegressOptions) -> Gathered:
    """Load or measure the samples; the stored baseline's entry is selected before measuring, so a
    missing or mismatched entry costs no measurement."""
    if opts.profile is not None:
        doc = read_json(opts.profile, "profile")
        candidate = samples_from_json(doc, f"profile {opts.profile}")
        key = key_for_profile(doc, opts.profile, opts)
        return Gathered(_stored_entry(opts, key), candidate, key, False)
    onnx_path = resolve_model(opts.onnx, opts.target)
    base_path = resolve_model(opts.baseline_onnx, opts.target) if opts.baseline_onnx is not None else None
    model = load_cpu_model(onnx_path)
    base_model = load_cpu_model(base_path) if base_path is not None else None
    frames = resolve_frames(model, onnx_path, opts.inputs, base_path)
    if base_model is not None:
        check_fits(frames, base_model, base_path)
    key = key_for_onnx(onnx_path, frames, opts)
    if base_model is not None:
        got = measure_models({"baseline": base_model, "candidate": model}, frames.feeds, opts.measure)
        return Gathered(got["baseline"], got["candidate"], key, True, model, frames)
    stored = _stored_entry(opts, key)
    candidate = measure_models({"candidate": model}, frames.feeds, opts.measure)["candidate"]
    return Gathered(stored, candidate, key, False, model, frames)


def run_regress(opts: RegressOptions) -> RegressResult:
    _validate(opts)
    got = gather(opts)
    baseline, candidate, key, model = got.baseline, got.candidate, got.key, got.model
    inputs = got.frames.source if got.frames is not None else ""
    if baseline is None:
        path = update_baseline(opts.baseline, key, candidate)
        return RegressResult(
            0,
            None,
            (),
            (),
            {"baseline": path},
            f"baseline recorded: {path} ({key.describe()}, {len(candidate.total_ms)} runs)",
            inputs,
        )
    verdict = compare(baseline, candidate, opts.gate, paired=got.paired)
    outputs = _accuracy(opts, model, got.frames.feeds[0] if got.frames is not None else {})
    metrics = tuple(check_metric(m.name, m.value, m.reference, m.tolerance) for m in opts.metrics)
    md = report.markdown(
        verdict, baseline, candidate, list(outputs), list(metrics), title=key.describe(), inputs=inputs
    )
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
            "statistic": report.statistic_label(verdict),
            "inputs": inputs,
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
        return RegressResult(0, verdict, outputs, metrics, reports, message, inputs)
    return RegressResult(1 if failed else 0, verdict, outputs, metrics, reports, message, inputs)


def _summary(
    verdict: LatencyVerdict, outputs: tuple[OutputCheck, ...], metrics: tuple[MetricCheck, ...], failed: bool
) -> str:
    ci = verdict.total.ci
    line = (
        f"{'FAIL' if failed else 'PASS'}: total {ci.slowdown_pct:+.1f}% by {ci.statistic} "
        f"(medians {ci.baseline_median_ms:.3f} -> {ci.candidate_median_ms:.3f} ms; "
        f"CI {100 * (ci.low - 1):+.1f}%..{100 * (ci.high - 1):+.1f}%, threshold "
        f"{100 * verdict.config.threshold:.1f}% at {100 * verdict.config.confidence:.0f}%, {verdict.mode}"
        f"{'; ' + ci.explanation() if ci.explanation() else ''})"
    )
    culprits = verdict.culprits()
    if culprits:
        line += "; slower modules: " + ", ".join(f"{m.name} {m.ci.slowdown_pct:+.0f}%" for m in culprits)
    bad = [c.name for c in outputs if not c.passed] + [m.name for m in metrics if not m.passed]
    if bad:
        line += "; accuracy failed: " + ", ".join(bad)
    return line
