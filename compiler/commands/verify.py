"""``sparsefuse verify BUNDLE``: integrity, signature, runtime compatibility, golden run.

Exit 0 when every check passes; 1 when the bundle fails one (tampered, a path or archive member
leaving the bundle, signature missing, bad or unchecked, incompatible, golden outputs out of
tolerance or not fitting the model); 2 when the input cannot be read as a bundle (missing,
truncated or not an archive, malformed manifest or golden data) and on usage errors. Every
failure is one ``error: ... (hint: ...)`` line on stderr. A bundle is verified against its own
files only: every path the manifest names must be a listed file strictly inside the bundle.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

SIGNATURE_POLICY = (
    "A signed bundle (with manifest.sig) fails unless --public-key checks its signature or "
    "--allow-unverified-signature accepts it unchecked. Only a signed bundle, checked with "
    "--public-key, protects the golden inputs, outputs and tolerances: anyone can edit those of "
    "an unsigned bundle and rewrite its manifest hashes."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a hand-off bundle: integrity, signature, compatibility, golden outputs (--run)",
        description="Verify a bundle directory or .tar.gz made by `sparsefuse handoff`. "
        "Every path in its manifest must be a listed file inside the bundle. " + SIGNATURE_POLICY + " "
        "Exit 0: pass; 1: the bundle fails a check; 2: not a readable bundle, or a usage error.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument(
        "--public-key", type=Path, default=None, help="ed25519 public key (PEM) to check manifest.sig"
    )
    p.add_argument(
        "--allow-unverified-signature",
        action="store_true",
        help="accept a signed bundle without checking its signature (integrity only)",
    )
    p.add_argument(
        "--run",
        action="store_true",
        help="run the golden inputs on the available backend (ONNX Runtime CPU here)",
    )
    p.set_defaults(func=run)


def compatibility(model: Any, manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(notes, problems) about this machine's runtimes versus the bundle's model and target."""
    import onnx
    import onnxruntime as ort

    notes, problems = [], []
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
    info = manifest["target_info"]
    if info["backend"] == "tensorrt":
        trt = _tensorrt_version()
        want = str(info["tensorrt"] or "")
        if trt is None:
            notes.append(
                f"TensorRT not found here: build the engine on the target (TensorRT {want}) with "
                f"{manifest['engine_dir']}/build_engine.sh"
            )
        elif trt.split(".")[:2] != want.split(".")[:2]:
            problems.append(f"TensorRT {trt} here, the target {manifest['target']} expects {want}")
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


def _ort_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's exception classes (Fail, InvalidArgument, ...): a bundle's model failing."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _session(model: Any, rel: str, optimized: bool) -> Any:
    """An ORT CPU session from the model's bytes: ORT never opens a path of the bundle's choosing."""
    import onnxruntime as ort

    from sparsefuse.compiler.bundle import BundleError
    from sparsefuse.compiler.regress.measure import with_cpu_functions

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized:  # ORT's saved optimized model: optimizing it again is not what ships
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = with_cpu_functions(model, rel)
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except _ort_errors() as exc:
        raise BundleError(
            f"ONNX Runtime cannot load {rel}: {_first_line(exc)}", "the model is damaged"
        ) from None


def _golden_frames(root: Path, manifest: dict[str, Any]) -> list[tuple[dict, dict]]:
    """Every golden frame, read (bounded, no pickle) before any model runs."""
    from sparsefuse.compiler import bundle_checks as checks

    return [
        tuple(
            checks.read_npz(checks.read_member(root, manifest, rel, checks.MAX_NPZ_BYTES), rel)
            for rel in (f"golden/inputs_{i}.npz", f"golden/outputs_{i}.npz")
        )
        for i in range(manifest["golden_frames"])
    ]


def _run_frames(session: Any, rel: str, frames: list[tuple[dict, dict]], tolerances: dict) -> list[str]:
    from sparsefuse.compiler import bundle_checks as checks
    from sparsefuse.compiler.bundle import BundleError
    from sparsefuse.compiler.regress.accuracy import check_outputs

    names = [o.name for o in session.get_outputs()]
    failures = []
    for i, (feeds, golden) in enumerate(frames):
        checks.check_feeds(feeds, session.get_inputs(), f"golden/inputs_{i}.npz")
        checks.check_golden_outputs(golden, names, f"golden/outputs_{i}.npz")
        try:
            got = dict(zip(names, session.run(None, feeds), strict=True))
        except _ort_errors() as exc:
            raise BundleError(
                f"{rel} fails on golden frame {i}: {_first_line(exc)}",
                "the golden data does not fit the model",
            ) from None
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


def golden_run(root: Path, manifest: dict[str, Any], model: Any) -> list[str]:
    """Run every golden frame through ORT CPU: the lowered model, and for ONNX Runtime targets
    also the backend's optimized model that ships. Returns failure lines (empty: all pass)."""
    from sparsefuse.compiler import bundle_checks as checks
    from sparsefuse.compiler.bundle import MAX_JSON_BYTES
    from sparsefuse.compiler.regress.accuracy import tolerance_from_json

    tolerances = {
        k: tolerance_from_json(v)
        for k, v in checks.read_tolerances(
            checks.read_member(root, manifest, "golden/tolerances.json", MAX_JSON_BYTES)
        ).items()
    }
    frames = _golden_frames(root, manifest)
    models = [(manifest["model"], model, False)]
    if manifest["target_info"]["backend"] == "onnxruntime":
        models += [
            (rel, checks.load_model(root, manifest, rel), True)
            for rel in manifest["engine_files"]
            if rel.endswith(".onnx")
        ]
    failures = []
    for rel, proto, optimized in models:
        failures += _run_frames(_session(proto, rel, optimized), rel, frames, tolerances)
    return failures


def _bundle_root(path: Path, tmp: Path) -> Path:
    from sparsefuse.compiler import bundle
    from sparsefuse.errors import SparsefuseError

    if path.is_dir():
        return path.resolve()
    if path.is_file():
        return bundle.safe_extract(path, tmp / "bundle").resolve()
    raise SparsefuseError(f"bundle {path} does not exist", "pass a bundle directory or .tar.gz")


def _signature(root: Path, public_key: Path | None, allow_unverified: bool) -> str:
    """The signature line to print, once the policy is met (else BundleError)."""
    from sparsefuse.compiler import bundle

    if public_key is not None:
        bundle.check_signature(root, public_key)
        return f"signature: ok ({public_key})"
    if not (root / bundle.SIGNATURE).exists():
        return "signature: none (unsigned bundle)"
    if not allow_unverified:
        raise bundle.BundleError(
            f"the bundle is signed ({bundle.SIGNATURE}) but no --public-key was given to check it",
            "pass --public-key SIGNER.pub, or --allow-unverified-signature to accept it unchecked",
        )
    return "signature: present, NOT checked (--allow-unverified-signature)"


def verify_bundle(
    path: Path, public_key: Path | None, run_golden: bool, allow_unverified: bool = False
) -> int:
    """Cheap checks first: manifest fields and paths, signature, then hashes, then the models."""
    from sparsefuse.compiler import bundle
    from sparsefuse.compiler import bundle_checks as checks

    with tempfile.TemporaryDirectory(prefix="sparsefuse-verify-") as tmp:
        root = _bundle_root(path, Path(tmp))
        manifest = bundle.read_manifest(root)
        checks.check_fields(manifest)
        signature = _signature(root, public_key, allow_unverified)
        checks.check_paths(root, manifest)
        bundle.check_integrity(root, manifest)
        print(f"integrity: ok ({len(manifest['files'])} files, target {manifest['target']})")
        print(signature)
        model = checks.load_model(root, manifest, manifest["model"])
        notes, problems = compatibility(model, manifest)
        for line in notes:
            print(f"compatibility: {line}")
        failures = [f"incompatible: {p}" for p in problems]
        if run_golden:
            failures += golden_run(root, manifest, model)
    if failures:
        raise bundle.BundleError("; ".join(failures), "see the lines above")
    print("verify: PASS" + ("" if run_golden else " (golden outputs not run; add --run)"))
    return 0


def run(args: argparse.Namespace) -> int:
    import sys

    from sparsefuse.compiler.bundle import BundleError

    try:
        return verify_bundle(args.bundle, args.public_key, args.run, args.allow_unverified_signature)
    except BundleError as err:
        print("verify: FAIL")
        print(err.one_line(), file=sys.stderr)
        return 1
