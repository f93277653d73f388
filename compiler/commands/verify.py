"""``sparsefuse verify BUNDLE``: integrity, signature, runtime compatibility, golden run.

Exit 0 when every check passes, 1 when the bundle fails one (tampered, unsafe archive, bad
signature, outputs out of tolerance), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a hand-off bundle: integrity, signature, compatibility, golden outputs (--run)",
        description="Verify a bundle directory or .tar.gz made by `sparsefuse handoff`.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument(
        "--public-key", type=Path, default=None, help="ed25519 public key (PEM) to check manifest.sig"
    )
    p.add_argument(
        "--run",
        action="store_true",
        help="run the golden inputs on the available backend (ONNX Runtime CPU here)",
    )
    p.set_defaults(func=run)


def compatibility(root: Path, manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(notes, problems) about this machine's runtimes versus the bundle's model and target."""
    import onnx
    import onnxruntime as ort

    notes, problems = [], []
    model = onnx.load(str(root / manifest["model"]), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    max_opset = onnx.defs.onnx_opset_version()
    if opsets.get("ai.onnx", 0) > max_opset:
        problems.append(f"model needs ONNX opset {opsets['ai.onnx']}, this onnx supports {max_opset}")
    custom = sorted({n.op_type for n in model.graph.node if n.domain == "sparsefuse"})
    local = {f.name for f in model.functions}
    unbound = [op for op in custom if op not in local]
    notes.append(f"onnxruntime {ort.__version__}; model IR {model.ir_version}, opsets {opsets}")
    if unbound:
        notes.append(
            f"custom ops {', '.join(unbound)} bind to the sparsefuse TensorRT plugins; the CPU check "
            "attaches their ONNX function bodies"
        )
    info = manifest.get("target_info", {})
    if info.get("backend") == "tensorrt":
        trt = _tensorrt_version()
        want = str(info.get("tensorrt") or "")
        if trt is None:
            notes.append(
                f"TensorRT not found here: build the engine on the target (TensorRT {want}) with "
                f"{manifest.get('engine_dir', 'engine')}/build_engine.sh"
            )
        elif trt.split(".")[:2] != want.split(".")[:2]:
            problems.append(f"TensorRT {trt} here, the target {manifest.get('target')} expects {want}")
        else:
            notes.append(f"TensorRT {trt} matches the target's {want}")
    return notes, problems


def _tensorrt_version() -> str | None:
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _session(root: Path, rel: str, optimized: bool) -> Any:
    import onnxruntime as ort

    from sparsefuse.compiler.regress.measure import load_cpu_model

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized:  # ORT's saved optimized model: optimizing it again is not what ships
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = load_cpu_model(root / rel)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def golden_run(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Run every golden frame through ORT CPU: the lowered model, and for ONNX Runtime targets
    also the backend's optimized model that ships. Returns failure lines (empty: all pass)."""
    import numpy as np

    from sparsefuse.compiler.regress.accuracy import check_outputs, tolerance_from_json
    from sparsefuse.compiler.regress.samples import read_json

    models = [(manifest["model"], False)]
    if manifest.get("target_info", {}).get("backend") == "onnxruntime":
        models += [(f, True) for f in manifest.get("engine_files", []) if f.endswith(".onnx")]
    tol_doc = read_json(root / "golden" / "tolerances.json", "tolerances")
    tolerances = {k: tolerance_from_json(v) for k, v in tol_doc.get("fp32", {}).items()}
    failures, frames = [], int(manifest.get("golden_frames", 0))
    if frames < 1:
        return ["bundle lists no golden frames"]
    for rel, optimized in models:
        session = _session(root, rel, optimized)
        names = [o.name for o in session.get_outputs()]
        for i in range(frames):
            with np.load(root / "golden" / f"inputs_{i}.npz") as data:
                feeds = {k: data[k] for k in data.files}
            with np.load(root / "golden" / f"outputs_{i}.npz") as data:
                golden = {k: data[k] for k in data.files}
            got = dict(zip(names, session.run(None, feeds), strict=True))
            for check in check_outputs(got, golden, tolerances):
                status = "ok" if check.passed else "FAIL"
                print(
                    f"  {rel} frame {i} {check.name}: max abs err {check.max_abs_err:.3g} "
                    f"<= {check.allowed:.3g} {status}"
                )
                if not check.passed:
                    failures.append(
                        f"{rel} frame {i} output {check.name}: {check.message} "
                        f"(max abs err {check.max_abs_err:.3g}, allowed {check.allowed:.3g})"
                    )
    return failures


def verify_bundle(path: Path, public_key: Path | None, run_golden: bool) -> int:
    from sparsefuse.compiler import bundle
    from sparsefuse.errors import SparsefuseError

    with tempfile.TemporaryDirectory(prefix="sparsefuse-verify-") as tmp:
        if path.is_dir():
            root = path
        elif path.is_file():
            root = bundle.safe_extract(path, Path(tmp) / "bundle")
        else:
            raise SparsefuseError(f"bundle {path} does not exist", "pass a bundle directory or .tar.gz")
        manifest = bundle.check_integrity(root)
        print(f"integrity: ok ({len(manifest['files'])} files, target {manifest.get('target')})")
        if public_key is not None:
            bundle.check_signature(root, public_key)
            print(f"signature: ok ({public_key})")
        elif (root / bundle.SIGNATURE).is_file():
            print("signature: present, not checked (pass --public-key)")
        notes, problems = compatibility(root, manifest)
        for line in notes:
            print(f"compatibility: {line}")
        failures = [f"incompatible: {p}" for p in problems]
        if run_golden:
            failures += golden_run(root, manifest)
    if failures:
        raise bundle.BundleError("; ".join(failures), "see the lines above")
    print("verify: PASS" + ("" if run_golden else " (golden outputs not run; add --run)"))
    return 0


def run(args: argparse.Namespace) -> int:
    import sys

    from sparsefuse.compiler.bundle import BundleError

    try:
        return verify_bundle(args.bundle, args.public_key, args.run)
    except BundleError as err:
        print(err.one_line(), file=sys.stderr)
        print("verify: FAIL", file=sys.stderr)
        return 1
