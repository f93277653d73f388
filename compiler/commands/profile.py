"""``sparsefuse profile``: a latency profile of one model on one target, always labelled.

- onnxruntime targets: measured here (ORT), with per-node and per-module times.
- TensorRT targets: measured on a real engine where TensorRT and a GPU exist; otherwise
  estimated by the roofline cost model, or imported from the target's trtexec exports
  (--import-trtexec, written by profile_engine.sh) as measured.
--latency-table also writes the sparsity allocator's per-layer, per-candidate table.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure or estimate per-module latency on a target (profile.json + png)",
        description="Write profile.json and profile.png for a model on a target. Latencies are "
        "labelled measured (device, backend, versions) or estimated (cost model name, version).",
    )
    parser.add_argument("--onnx", default=None, help="lowered ONNX model (OUT/lowered/<target>.onnx)")
    parser.add_argument("--target", required=True, help="target tag or path to a target .toml")
    parser.add_argument("--out", required=True, help="profile.json path (profile.png is written beside it)")
    parser.add_argument("--model", default="bevfusion-tiny",
                        help="model preset whose frames to feed; with --backend torch, the model to measure: "
                             "a preset or path/to/model.py:factory (with --frames-dir)")
    parser.add_argument("--frames-dir", default=None, metavar="DIR",
                        help="a folder of .npz frames (your model's inputs) to feed instead of a preset's")
    parser.add_argument("--frames", type=int, default=3, help="distinct frames to cycle through")
    parser.add_argument("--points", type=int, default=None, help="LiDAR points per frame (default: preset's)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first frame")
    parser.add_argument(
        "--inputs", default=None, help="an .npz of input arrays (one frame) instead of --model"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs (default 3)")
    parser.add_argument(
        "--duration", type=float, default=None, help="time runs for this many seconds instead"
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.add_argument(
        "--estimate", action="store_true", help="cost-model estimate even where measuring works"
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=("torch",),
        help="measure the PyTorch reference model (--model) instead of an ONNX model "
        "(CUDA events on a GPU, wall clock on the CPU)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device")
    parser.add_argument(
        "--import-trtexec",
        default=None,
        metavar="DIR",
        help="folder with profile_trtexec.json + times_trtexec.json from profile_engine.sh",
    )
    parser.add_argument(
        "--latency-table",
        default=None,
        metavar="JSON",
        help="also write {layer: {candidate: ms}} for the sparsity allocator",
    )
    parser.add_argument("--candidates", nargs="+", default=None, help="candidate keys for --latency-table")
    parser.set_defaults(func=run)


def _frames(args: argparse.Namespace) -> list[dict]:
    import numpy as np

    if args.frames_dir:
        from sparsefuse.compiler.model_interface import read_frames_dir

        return read_frames_dir(args.frames_dir)
    if args.inputs:
        from pathlib import Path

        from sparsefuse.errors import SparsefuseError

        if not Path(args.inputs).exists():
            raise SparsefuseError(f"inputs file not found: {args.inputs}", "pass an .npz of input arrays")
        from sparsefuse.compiler.cli_inputs import load_npz

        return [load_npz(args.inputs, "--inputs")]
    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import get_preset

    preset = get_preset(args.model)
    frames = []
    for i in range(max(1, args.frames)):
        frame = random_frame(preset, args.seed + i, num_points=args.points)
        frames.append(
            {k: np.ascontiguousarray(frame[k].numpy(), dtype=np.float32) for k in ("images", "points")}
        )
    return frames


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sparsefuse.compiler.cli_inputs import check_out_path
    from sparsefuse.errors import SparsefuseError
    from sparsefuse.models.frames import check_num_points
    from sparsefuse.targets.profiler import write_profile
    from sparsefuse.targets.registry import get_target

    console = Console(stderr=True)
    check_num_points(args.points, "--points")
    # Cheap checks before measuring: where the results go, and what --latency-table needs.
    check_out_path(args.out, "--out", is_dir=False)
    if args.latency_table:
        if not args.onnx:
            raise SparsefuseError("--latency-table needs --onnx", "pass the lowered model")
        check_out_path(args.latency_table, "--latency-table", is_dir=False)
    target = get_target(args.target)
    if args.backend == "torch":
        from pathlib import Path

        from sparsefuse.compiler.model_interface import parse_model_ref
        from sparsefuse.compiler.model_source import factory_source, preset_source
        from sparsefuse.targets.backends import torch_backend

        ref = parse_model_ref(args.model)
        source = (preset_source(args.model) if ref.is_preset
                  else factory_source(ref, Path(args.frames_dir) if args.frames_dir else None, None))
        options = torch_backend.TorchOptions(args.device, input_names=source.spec.input_names,
                                             output_names=source.spec.output_names)
        built = torch_backend.build(source.converted, target, options)
        profile = torch_backend.profile(
            built, _frames(args), runs=args.runs, warmup=args.warmup, duration_s=args.duration
        )
    elif args.import_trtexec:
        from sparsefuse.targets.profile_import import import_trtexec

        profile = import_trtexec(
            args.import_trtexec,
            target.tag,
            onnx_model=args.onnx,
            lidar_points=args.points or 0,
            tensorrt_version=target.tensorrt or "",
        )
    else:
        if not args.onnx:
            raise SparsefuseError(
                "--onnx is required unless --import-trtexec is given",
                "pass the lowered model, e.g. OUT/lowered/cpu.onnx",
            )
        from sparsefuse.compiler.cli_inputs import check_feeds, check_onnx_file

        model = check_onnx_file(args.onnx, "--onnx")
        frames = _frames(args)
        check_feeds(model, frames, f"the frames ({'--inputs' if args.inputs else '--frames-dir / --model'})")
        if target.backend == "onnxruntime" and not args.estimate:
            from sparsefuse.targets.engine import profile_onnxruntime

            profile = profile_onnxruntime(
                args.onnx,
                target,
                frames,
                runs=args.runs,
                warmup=args.warmup,
                duration_s=args.duration,
                intra_op_threads=args.threads,
            )
        else:
            from sparsefuse.targets.cost_model import estimated_profile
            from sparsefuse.targets.engine import observe_dims

            profile = estimated_profile(args.onnx, target, observe_dims(args.onnx, frames))
    path = write_profile(profile, args.out)
    doc = profile.to_json()
    console.print(f"{doc['label']} profile for {target.tag}: {path}")
    for module, ms in doc["per_module_ms"].items():
        console.print(f"  {module:16s} {ms:10.3f} ms")
    if args.latency_table:
        if not args.onnx:
            raise SparsefuseError("--latency-table needs --onnx", "pass the lowered model")
        from sparsefuse.targets.cost_model import DEFAULT_CANDIDATES, latency_table, write_latency_table

        measured = profile.per_node if profile.label == "measured" else ()
        table = latency_table(
            args.onnx, target, tuple(args.candidates or DEFAULT_CANDIDATES), measured=measured
        )
        write_latency_table(table, args.latency_table, target)
        console.print(f"latency table ({len(table)} layers, estimated): {args.latency_table}")
    return 0
