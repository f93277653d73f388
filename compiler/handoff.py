"""``sparsefuse handoff``: package one compile for vehicle integration (docs/design.md §1, job 3).

Bundle layout (every file listed in manifest.json with its SHA-256; lowered/ and engine/ as in
the compile directory, so the trtexec recipes find the model where they expect it):
    lowered/<target>.onnx        the lowered ONNX for the target (custom nodes bind to plugins)
    native/                      CMakeLists.txt, cmake/, plugins/**/*.cu|cuh|h|cpp (plugin + kernels)
    engine/<target>/             build_engine.sh, profile_engine.sh (and the backend's text outputs)
    quantization/                calibration / scales, when the compile made any
    sparsity/plan.json           the per-layer sparsity decision, when there is one (and
                                 weights.safetensors, an OBS plan's reconstructed weights)
    golden/inputs_<i>.npz, outputs_<i>.npz, tolerances.json   torch-reference frames
    latency/budget.json, latency/profile.json                  budget and the last profile (label kept)
    compile.json                 the compile record (config, versions, hashes)
    README.md                    for the integrator
    manifest.json, manifest.sig  (signature optional, ed25519)
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.atomic import write_bytes
from sparsefuse.compiler import bundle
from sparsefuse.errors import SparsefuseError
from sparsefuse.layout import engine_rel, lowered_rel, target_slug

REPO_ROOT = Path(__file__).resolve().parent.parent
NATIVE_SUFFIXES = (".cu", ".cuh", ".h", ".hpp", ".cpp")
HARDWARE_SPECIFIC = (".plan", ".engine", ".cache")  # built on the target, never shipped from here


@dataclass(frozen=True)
class HandoffOptions:
    out: Path
    target: str
    bundle_dir: Path | None = None  # default OUT/handoff/<target slug>
    sign_key: Path | None = None
    latency_budget_ms: float | None = None
    golden_frames: int = 2
    profile: Path | None = None  # ship this profile.json even if it is for another target


@dataclass(frozen=True)
class HandoffResult:
    bundle_dir: Path
    archive: Path
    manifest: dict[str, Any]
    signed: bool




@functools.cache
def git_info() -> dict[str, Any]:
    """Commit of the sparsefuse checkout (read-only git), or 'unknown' outside one."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def handoff_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("onnx", "onnxruntime", "numpy", "cryptography", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@contextlib.contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Build a directory beside ``dest`` and swap it into place only when complete. An existing
    ``dest`` is replaced only when it is an earlier bundle (never a folder of someone's files)."""
    if (
        dest.is_symlink()
        or dest.is_file()
        or (dest.is_dir() and any(dest.iterdir()) and not (dest / bundle.MANIFEST).is_file())
    ):
        raise SparsefuseError(
            f"bundle folder {dest} exists and is not a sparsefuse bundle", "choose a new --out folder"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if os.access(src, os.X_OK) and src.suffix == ".sh":
        dst.chmod(0o755)


def lowered_model(out: Path, tag: str, backend: str) -> tuple[bytes, str]:
    """(lowered ONNX bytes, who produced them). Lowers OUT/passes/model.onnx for the target's
    backend when the compile did not lower for this target (the lowering pass is pure)."""
    path = out / lowered_rel(tag)
    if path.is_file():
        return path.read_bytes(), "compile"
    for source in (out / "passes" / "model.onnx", out / "export" / "model.onnx"):
        if source.is_file():
            import onnx

            from sparsefuse.passes.lower import lower
            from sparsefuse.passes.manager import PassContext

            model = lower(onnx.load(str(source)), PassContext(target_backend=backend))
            return (
                model.SerializeToString(),
                f"handoff (passes.lower for {backend} from {source.relative_to(out)})",
            )
    raise SparsefuseError(
        f"{out} has no {lowered_rel(tag)} and no exported model to lower",
        f"run `sparsefuse compile --target {tag} --out {out}` first",
    )


def native_sources(root: Path = REPO_ROOT) -> dict[str, Path]:
    """{bundle path: source} for the CMake recipe and the plugin/kernel sources."""
    files: dict[str, Path] = {}
    if (root / "CMakeLists.txt").is_file():
        files["native/CMakeLists.txt"] = root / "CMakeLists.txt"
    for path in sorted((root / "cmake").glob("*.cmake")):
        files[f"native/cmake/{path.name}"] = path
    for path in sorted((root / "plugins").rglob("*")):
        if path.is_file() and path.suffix in NATIVE_SUFFIXES and "__pycache__" not in path.parts:
            files[f"native/{path.relative_to(root).as_posix()}"] = path
    return files


def golden_frames(out: Path, record: dict[str, Any], count: int) -> list[tuple[dict, dict]]:
    """[(inputs, outputs)] from the compile's verify frames (polygraphy JSON), else from the torch
    reference on fresh synthetic frames of the compiled preset."""
    inputs_json, golden_json = out / "verify" / "inputs.json", out / "verify" / "golden.json"
    if inputs_json.is_file() and golden_json.is_file():
        pairs = list(
            zip(
                bundle.read_polygraphy_feeds(inputs_json),
                bundle.read_polygraphy_outputs(golden_json),
                strict=False,
            )
        )
        if pairs:
            return pairs[:count]
    from sparsefuse.compiler.config import CompileConfig
    from sparsefuse.compiler.pipeline import TorchSide
    from sparsefuse.compiler.provenance import source_digest

    compiled_with = record.get("versions", {}).get("sparsefuse_source")
    if compiled_with != source_digest():
        # Regenerated golden outputs would come from today's model code, not the compiled one.
        raise SparsefuseError(
            f"{out} has no verify frames, and sparsefuse's sources changed since it was compiled",
            f"recompile (sparsefuse compile --out {out}) so that golden frames match the model",
        )

    cfg = record.get("config", {})
    if "model" not in cfg:
        raise SparsefuseError(
            f"{out}/compile.json names no model, so no golden frames can be made",
            "recompile with `sparsefuse compile`",
        )
    rig = Path(cfg["rig"]) if cfg.get("rig") else None
    weights = Path(cfg["weights"]) if cfg.get("weights") else None
    frames = Path(cfg["frames"]) if cfg.get("frames") else None
    config = CompileConfig(cfg["model"], cfg.get("target", "cpu"), out, rig, int(cfg.get("seed", 0)),
                           weights=weights, frames=frames)
    if not config.is_preset and frames is None:
        raise SparsefuseError(f"{out} has no verify frames, and its model was given as a Python object",
                              f"recompile (sparsefuse.compile(..., out={str(out)!r})) to write them")
    side = TorchSide(config)
    if (out / "sparsity" / "plan.json").is_file():
        side.plan = out / "sparsity" / "plan.json"  # the compile verified against the pruned model
    return [(frame, side.forward(frame)) for _, frame in side.verify_frames(count)]


def golden_tolerances(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """docs/tolerances.md per output: fp32 for the CPU check, fp16 for an fp16/TF32 engine."""
    from sparsefuse.compiler.regress.accuracy import default_tolerance

    return {
        "schema_version": 1,
        "rule": "max|a-b| <= rtol_of_max * max|ref| + atol; exact for integer outputs",
        "fp32": {n: default_tolerance(a.dtype, "fp32").to_json() for n, a in sorted(outputs.items())},
        "fp16": {n: default_tolerance(a.dtype, "fp16").to_json() for n, a in sorted(outputs.items())},
    }


def engine_recipes(stage: Path, target: Any, model_rel: str, pairs: list[tuple[dict, dict]]) -> list[str]:
    """Write targets' trtexec recipes (build_engine.sh, profile_engine.sh) into the bundle's
    engine/<target>/, with the optimization profile from the golden frames' dynamic sizes."""
    import onnx

    from sparsefuse.targets.backends import trtexec
    from sparsefuse.targets.trt_plan import TrtOptions, make_plan

    model = onnx.load(str(stage / model_rel), load_external_data=False)
    dynamic: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        axes = [i for i, d in enumerate(dims) if d.dim_value <= 0]
        if axes:
            sizes = [int(inputs[value.name].shape[axes[0]]) for inputs, _ in pairs if value.name in inputs]
            if sizes:
                dynamic[value.name] = tuple(sizes)
    plan = make_plan(
        stage / model_rel,
        target,
        TrtOptions(dynamic_dims=tuple(sorted(dynamic.items()))),
        stage / engine_rel(target.tag),
    )
    recipes = trtexec.write_recipes(plan)
    root = stage.resolve()
    return [p.resolve().relative_to(root).as_posix() for p in (recipes.build_script, recipes.profile_script)]


def readme_text(fields: dict[str, Any], files: list[str]) -> str:
    info = fields["target_info"]
    trt = (
        (
            f"TensorRT {info['tensorrt']} (SM {info['sm']}"
            + (f", JetPack {info['jetpack']}" if info.get("jetpack") else "")
            + ")"
        )
        if info["backend"] == "tensorrt"
        else "ONNX Runtime"
    )
    listing = "\n".join(f"- `{f}`" for f in files)
    label = fields["profile_label"]
    elsewhere = fields.get("profile_target") and fields["profile_target"] != fields["target"]
    if label is None and fields.get("profile_note"):
        profile_line = (f"No latency claim ships: {fields['profile_note']} "
                        "(run `profile_engine.sh` on the target).")
    elif label is None:
        profile_line = "No profile was recorded for this compile (`sparsefuse profile` writes one)."
    else:
        where = f" **on target `{fields['profile_target']}`, not on this one**" if elsewhere else ""
        what = ": it comes from a cost model, not from a device." if label == "estimated" else "."
        profile_line = f"`latency/profile.json` is the last profile, labelled `{label}`{where}{what}"
    return f"""# sparsefuse hand-off bundle: {fields["target"]}

Runtime: {trt}. Model: `{fields["model"]}` (lowered by {fields["lowered_by"]}).
sparsefuse commit `{fields["git"]["commit"]}`; compile config in `compile.json`.

## 1. Check the bundle
    sparsefuse verify BUNDLE [--public-key signer.pub] [--run]
Every file is listed with its SHA-256 in `manifest.json`; `manifest.sig` (when present) is an
ed25519 signature over `manifest.json`. `--run` feeds `golden/inputs_<i>.npz` through the
available backend and checks `golden/outputs_<i>.npz` within `golden/tolerances.json`
(float32 max|a-b| <= 1e-4*max|ref| + 1e-5, float16 1e-2 / 1e-3, integers exact).

The bundle is checked against its own files only: every path in `manifest.json` must be a file
listed there, inside the bundle (no absolute path, `..` or symbolic link). A signed bundle fails
`verify` unless `--public-key` checks its signature (or `--allow-unverified-signature` accepts it
unchecked). Only a signed bundle, checked with `--public-key`, protects the golden data: anyone can
edit the golden inputs, outputs and tolerances of an unsigned bundle and rewrite the hashes in
`manifest.json`, and it still verifies. Exit codes: 0 pass, 1 the bundle fails a check, 2 it is
not a readable bundle.

## 2. Build the plugins and the engine (on the target)
    cmake -S native -B native/build -DCMAKE_CUDA_ARCHITECTURES={info["sm"] or "native"}
    cmake --build native/build -j
    export SPARSEFUSE_TRT_PLUGINS=$PWD/native/build/lib/libsparsefuse_trt_plugins.so
    {fields["engine_dir"]}/build_engine.sh     # trtexec: ONNX + plugin library -> model.plan
    {fields["engine_dir"]}/profile_engine.sh   # records power mode and clocks with the timings
The custom nodes (domain `sparsefuse`: Voxelize, SparseConv3d, ScatterDense, BEVPool) bind to the
IPluginV3 plugins of namespace `sparsefuse`, version 1. Engines are never shipped: they are
specific to the GPU and TensorRT version, so build them on the vehicle's hardware.

## 3. Latency
`latency/budget.json` holds the budget. {profile_line}

## Files
{listing}
"""


def collect(opts: HandoffOptions, stage: Path) -> dict[str, Any]:
    """Write every bundle file into ``stage``; return the manifest fields (without files)."""
    from sparsefuse.compiler.regress.samples import read_json
    from sparsefuse.targets.registry import get_target

    out = opts.out
    if not (out / "compile.json").is_file():
        raise SparsefuseError(
            f"{out} is not a compile directory (no compile.json)",
            "run `sparsefuse compile --out OUT` first, then hand off OUT",
        )
    record = read_json(out / "compile.json", "compile record")
    target = get_target(opts.target)
    onnx_bytes, lowered_by = lowered_model(out, target.tag, target.backend)
    model_rel = lowered_rel(target.tag)  # same layout as OUT: the recipes find it
    write_bytes(stage / model_rel, onnx_bytes)
    pairs = golden_frames(out, record, opts.golden_frames)

    for rel, src in native_sources().items():
        _copy(src, stage / rel)

    engine_dir = engine_rel(target.tag)
    shipped_engine = []
    if (out / engine_dir).is_dir():
        for path in sorted(p for p in (out / engine_dir).rglob("*") if p.is_file()):
            if path.suffix not in HARDWARE_SPECIFIC and not path.name.endswith(".log"):
                rel = f"{engine_dir}/{path.relative_to(out / engine_dir).as_posix()}"
                _copy(path, stage / rel)
                shipped_engine.append(rel)
    if target.backend == "tensorrt" and not (stage / engine_dir / "build_engine.sh").exists():
        shipped_engine += engine_recipes(stage, target, model_rel, pairs)

    for name in ("quantization", "quant"):
        if (out / name).is_dir():
            for path in sorted(p for p in (out / name).rglob("*") if p.is_file()):
                _copy(path, stage / "quantization" / path.relative_to(out / name))
    if (out / "sparsity" / "plan.json").is_file():
        _copy(out / "sparsity" / "plan.json", stage / "sparsity" / "plan.json")
        weights = out / "sparsity" / "weights.safetensors"  # an OBS plan's reconstructed weights
        if weights.is_file():
            _copy(weights, stage / "sparsity" / "weights.safetensors")

    for i, (inputs, outputs) in enumerate(pairs):
        write_bytes(stage / "golden" / f"inputs_{i}.npz", bundle.npz_bytes(inputs))
        write_bytes(stage / "golden" / f"outputs_{i}.npz", bundle.npz_bytes(outputs))
    write_bytes(stage / "golden" / "tolerances.json", bundle.json_bytes(golden_tolerances(pairs[0][1])))

    profile_label, profile_target, profile_note = None, None, None
    source = opts.profile or (out / "profile.json")
    if source.is_file():
        doc = read_json(source, "profile")
        profile_target = str(doc.get("target") or "")
        if opts.profile is None and profile_target != target.tag:
            # A CPU compile handed off to a Jetson target: its measured x86 latency is no claim
            # about the target. It ships only when the user passes it explicitly (--profile).
            profile_note = (f"the compile's profile is for target `{profile_target or 'unknown'}`, not "
                            f"`{target.tag}`; it is not shipped as this bundle's latency claim")
        else:
            _copy(source, stage / "latency" / "profile.json")
            profile_label = doc.get("label")
    write_bytes(
        stage / "latency" / "budget.json",
        bundle.json_bytes(
            {
                "schema_version": 1,
                "target": target.tag,
                "budget_ms": opts.latency_budget_ms,
                "source": "sparsefuse handoff --latency-budget-ms"
                if opts.latency_budget_ms is not None
                else "not set",
                "last_profile_label": profile_label,
                "profile_target": profile_target if profile_label is not None else None,
                "profile_note": profile_note,
            }
        ),
    )
    _copy(out / "compile.json", stage / "compile.json")

    fields = {
        "target": target.tag,
        "target_info": {
            "backend": target.backend,
            "sm": target.sm,
            "tensorrt": target.tensorrt,
            "jetpack": getattr(target, "jetpack", None),
        },
        "model": model_rel,
        "engine_dir": engine_dir,
        "lowered_by": lowered_by,
        "golden_frames": len(pairs),
        "git": git_info(),
        "tool_versions": {"compile": record.get("versions", {}), "handoff": handoff_versions()},
        "compile_config": record.get("config", {}),
        "engine_files": shipped_engine,
        "profile_label": profile_label,
    }
    readme_fields = {**fields, "profile_target": profile_target, "profile_note": profile_note}
    write_bytes(stage / "README.md", readme_text(readme_fields, sorted(bundle.list_files(stage))).encode())
    return fields


def _normalize_modes(root: Path) -> None:
    """Readable by the integrator (temp files are created 0600); scripts executable."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() or path.suffix == ".sh" else 0o644)


def make_bundle(opts: HandoffOptions) -> HandoffResult:
    """Write the bundle directory and its deterministic tar.gz, both atomically."""
    from sparsefuse.targets.registry import get_target

    # The folder goes by the target's tag (a user TOML's path is not a tag).
    slug = target_slug(get_target(opts.target).tag)
    dest = Path(os.path.abspath(opts.bundle_dir or opts.out / "handoff" / slug))
    with staged_dir(dest) as stage:
        fields = collect(opts, stage)
        manifest = bundle.build_manifest(stage, fields)
        manifest_bytes = bundle.json_bytes(manifest)
        write_bytes(stage / bundle.MANIFEST, manifest_bytes)
        if opts.sign_key is not None:
            write_bytes(stage / bundle.SIGNATURE, bundle.sign(manifest_bytes, opts.sign_key))
        _normalize_modes(stage)
    archive = bundle.write_tar_gz(dest, dest.with_name(dest.name + ".tar.gz"))
    archive.chmod(0o644)
    return HandoffResult(dest, archive, manifest, opts.sign_key is not None)
