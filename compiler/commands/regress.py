"""``sparsefuse regress``: noise-aware latency gate plus accuracy gate (exit 0 pass, 1 fail, 2 error)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "regress",
        help="gate latency (bootstrap CI of the median ratio) and accuracy against a baseline",
        description="Compare a candidate with a baseline. Fails (exit 1) when the candidate is slower "
        "by more than --threshold percent with --confidence (lower CI bound of the median ratio), or when "
        "outputs leave the golden tolerances. Exit 2 on usage errors. Most sensitive: --baseline-onnx "
        "OLD.onnx --onnx NEW.onnx (both measured now, interleaved); a stored --baseline B.json "
        "compares across time, where a shared machine's drift leaves a few percent of error.",
    )
    src = p.add_argument_group("candidate and baseline")
    src.add_argument(
        "--baseline",
        type=Path,
        help="baseline JSON (entries keyed by model, target, backend, version, precision, input sizes)",
    )
    src.add_argument("--profile", type=Path, help="candidate profile.json with per-run samples_ms")
    # `--model` names a model (preset or factory) everywhere else; here it would mean an ONNX file.
    src.add_argument("--model", dest="model_alias", default=None, help=argparse.SUPPRESS)
    src.add_argument(
        "--onnx",
        dest="onnx",
        type=Path,
        help="candidate ONNX, or a compile directory OUT (its lowered model, fed its verify frames): "
        "measure it now",
    )
    src.add_argument("--baseline-onnx", type=Path, help="baseline ONNX measured now, interleaved with --onnx")
    src.add_argument(
        "--inputs",
        type=Path,
        help="npz of model inputs (e.g. a bundle's golden/inputs.npz). Default: the compile's verify "
        "frames, else synthetic frames for a preset-shaped graph; other models with dynamic inputs "
        "need it",
    )
    src.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the candidate's samples as the baseline for its key (atomic)",
    )
    key = p.add_argument_group("baseline key overrides")
    key.add_argument("--target", help="target tag (default: from compile.json, else cpu)")
    key.add_argument("--precision", help="fp32 | fp16 | int8 (default fp32)")
    key.add_argument(
        "--model-hash", help="id of the source model (default: from compile.json, else ONNX sha256)"
    )
    meas = p.add_argument_group("measurement (with --onnx)")
    meas.add_argument("--runs", type=int, default=100, help="timed runs per model (default 100)")
    meas.add_argument("--warmup", type=int, default=10)
    meas.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    meas.add_argument(
        "--clock",
        choices=("thread", "wall"),
        default=None,
        help="thread: CPU time of the inference thread (default with 1 thread); wall: end to end",
    )
    meas.add_argument("--no-reference", action="store_true", help="skip the in-run reference kernel")
    meas.add_argument(
        "--modules",
        choices=("prefix", "bevfusion"),
        default="prefix",
        help="module attribution: leading name scope, or the BEVFusion split",
    )
    gate = p.add_argument_group("gate")
    gate.add_argument("--threshold", type=float, default=5.0, help="allowed slowdown in percent (default 5)")
    gate.add_argument("--confidence", type=float, default=0.95, help="CI level (default 0.95)")
    gate.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    acc = p.add_argument_group("accuracy")
    acc.add_argument("--golden", type=Path, help="golden outputs npz (docs/tolerances.md tolerances)")
    acc.add_argument("--outputs", type=Path, help="candidate outputs npz (else --onnx is run on --inputs)")
    acc.add_argument(
        "--tolerances", type=Path, help="per-output tolerances JSON {name: {rtol_of_max, atol, exact}}"
    )
    acc.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME=VALUE:REFERENCE:TOL",
        help="benchmark metric within ±TOL of REFERENCE (mmdeploy's rule), e.g. mAP=0.612:0.615:0.01",
    )
    p.add_argument("--no-plot", action="store_true", help="skip regress.png")
    p.add_argument(
        "--report-dir",
        type=Path,
        default=Path("."),
        help="where regress.md, regress.junit.xml, regress.png, regress.json go (default .)",
    )
    p.set_defaults(func=run)


def _metric(text: str):
    from sparsefuse.compiler.regress.run import Metric
    from sparsefuse.errors import SparsefuseError

    try:
        name, rest = text.split("=", 1)
        value, reference, tol = (float(x) for x in rest.split(":"))
    except ValueError:
        raise SparsefuseError(
            f"--metric {text!r} is malformed", "use NAME=VALUE:REFERENCE:TOLERANCE"
        ) from None
    return Metric(name, value, reference, tol)


def run(args: argparse.Namespace) -> int:
    from sparsefuse.compiler.regress.gate import GateConfig
    from sparsefuse.compiler.regress.measure import MeasureConfig
    from sparsefuse.compiler.regress.run import RegressOptions, run_regress
    from sparsefuse.errors import SparsefuseError

    if args.model_alias is not None:
        raise SparsefuseError("regress takes no --model (elsewhere it names a model, not an ONNX file)",
                              f"pass the candidate as --onnx {args.model_alias}")
    if not 0 <= args.threshold < 100:
        raise SparsefuseError(
            f"--threshold {args.threshold} is not a percentage in [0, 100)", "e.g. --threshold 5"
        )
    if not 0.5 < args.confidence < 1:
        raise SparsefuseError(f"--confidence {args.confidence} is not in (0.5, 1)", "e.g. --confidence 0.95")
    clock = args.clock or ("thread" if args.threads == 1 else "wall")
    opts = RegressOptions(
        baseline=args.baseline,
        profile=args.profile,
        onnx=args.onnx,
        baseline_onnx=args.baseline_onnx,
        inputs=args.inputs,
        measure=MeasureConfig(
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            reference=not args.no_reference,
            clock=clock,
            module_scheme=args.modules,
        ),
        gate=GateConfig(threshold=args.threshold / 100.0, confidence=args.confidence, n_boot=args.bootstrap),
        target=args.target,
        precision=args.precision,
        model_hash=args.model_hash,
        report_dir=args.report_dir,
        update_baseline=args.update_baseline,
        golden=args.golden,
        outputs=args.outputs,
        tolerances=args.tolerances,
        metrics=tuple(_metric(m) for m in args.metric),
        plot=not args.no_plot,
    )
    result = run_regress(opts)
    if result.inputs:
        print(f"inputs: {result.inputs}")
    print(result.message)
    for kind, path in sorted(result.reports.items()):
        print(f"  {kind}: {path}")
    return result.exit_code
