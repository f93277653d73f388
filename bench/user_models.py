"""Bring-your-own-model benchmark: every reference user model in examples/models/ through
conversion and ``compile --target cpu``, with the error against the ORIGINAL model (spconv inside).

Per model: conversion wall time (s), compile wall time (s, all stages), the converted modules,
and the worst error over the verify frames and outputs of (a) the ONNX Runtime graph against the
original model, (b) the converted PyTorch model against the original (the conversion alone).

    python bench/user_models.py [--models centerpoint,sparse_unet] [--out build/bench-user]

Prints JSON. Times are wall clock on this machine (measured), one run each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(path: Path, out: Path, frames: int) -> dict:
    import torch

    import sparsefuse
    from sparsefuse.compiler.model_source import user_source

    module = load(path)
    sample = module.make_frames(frames + 1, seed=0)
    built = module.build()
    model, spec = built if isinstance(built, tuple) else (built, None)
    start = time.perf_counter()
    source = user_source(model, sample, spec, label=path.name)
    _, report = source.conversion
    convert_s = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    torch.set_num_threads(1)
    result = sparsefuse.compile(model, sample, spec=spec, target="cpu", out=out, verify_frames=frames)
    compile_s = time.perf_counter() - start
    verify = json.loads((out / "verify.json").read_text())
    onnx_err = max(c["max_abs"] for f in verify["frames"] for c in f["outputs"].values())
    onnx_rel = max(c["max_rel"] for f in verify["frames"] for c in f["outputs"].values())
    conversion = verify.get("conversion", {}).get("outputs", {})
    stats = json.loads((out / "compile.json").read_text())
    kinds: dict[str, int] = {}
    for row in report.converted:
        folded = row.target.startswith(("folded", "fused"))
        what = row.source.rsplit(".", 1)[-1] + (" (folded/fused)" if folded else "")
        kinds[what] = kinds.get(what, 0) + 1
    return {
        "model": path.stem,
        "verify_pass": result.verify_passed,
        "convert_s": round(convert_s, 3),
        "compile_s": round(compile_s, 3),
        "stage_s": stats["timings_s"],
        "converted": kinds,
        "onnx_vs_original_max_abs": onnx_err,
        "onnx_vs_original_max_rel": onnx_rel,
        "converted_torch_vs_original_max_abs": max((c["max_abs"] for c in conversion.values()), default=None),
        "verify_frames": len(verify["frames"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated stems (default: all)")
    parser.add_argument("--out", default="build/bench-user-models")
    parser.add_argument("--frames", type=int, default=2, help="verify frames per model")
    args = parser.parse_args()
    import spconv
    import torch

    paths = sorted(p for p in EXAMPLES.glob("*.py") if "\ndef build(" in p.read_text())
    if args.models:
        wanted = set(args.models.split(","))
        paths = [p for p in paths if p.stem in wanted]
    rows = [measure(p, Path(args.out) / p.stem, args.frames) for p in paths]
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "python": platform.python_version(), "torch": torch.__version__,
                      "spconv": spconv.__version__, "label": "measured", "models": rows}, indent=2))


if __name__ == "__main__":
    main()
