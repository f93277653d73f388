"""``sparsefuse build``: build one lowered ONNX model for one target.

onnxruntime targets: an ORT session; the optimized model is saved into --out.
TensorRT targets: a real engine where TensorRT and a GPU exist; always build_engine.sh and
profile_engine.sh (trtexec recipes) to run on the target.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build an engine (or its trtexec recipe) for one target",
        description="Build a lowered ONNX model for a target. Where TensorRT is absent, writes "
        "build_engine.sh / profile_engine.sh for the target instead of an engine.",
    )
    parser.add_argument("--onnx", required=True, help="lowered ONNX model (OUT/lowered/<target>.onnx)")
    parser.add_argument("--target", required=True, help="target tag or path to a target .toml")
    parser.add_argument("--out", required=True, help="engine directory (OUT/engine/<target>)")
    parser.add_argument(
        "--precision", default="fp16", choices=("fp32", "fp16", "int8"), help="TensorRT precision"
    )
    parser.add_argument(
        "--sparsity",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="2:4 sparse tactics (default: on where the target supports them)",
    )
    parser.add_argument("--dla-core", type=int, default=None, help="run on this DLA core with GPU fallback")
    parser.add_argument(
        "--points",
        type=int,
        nargs="+",
        default=None,
        help="observed LiDAR point counts (min/opt/max of the optimization profile)",
    )
    parser.add_argument("--workspace-mib", type=int, default=None, help="builder workspace pool limit [MiB]")
    parser.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0..5")
    parser.add_argument("--plugin-lib", default=None, help="libsparsefuse_trt_plugins.so path on the target")
    parser.add_argument("--plugin-loading", default=None, choices=("static", "dynamic"),
                        help="how TensorRT loads the plugin library: static (default: the library registers "
                             "its creators when loaded, trtexec --staticPlugins) or dynamic (TensorRT 10+: "
                             "IPluginRegistry::loadLibrary through getCreators, trtexec --dynamicPlugins)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sparsefuse.compiler.cli_inputs import check_onnx_file
    from sparsefuse.targets.registry import get_target

    console = Console(stderr=True)
    if args.points:
        from sparsefuse.errors import SparsefuseError
        from sparsefuse.models.frames import check_num_points

        for count in args.points:
            check_num_points(count, "--points")
        if len(args.points) > 3 or list(args.points) != sorted(args.points):
            raise SparsefuseError(f"--points {' '.join(map(str, args.points))} is not min [opt [max]]",
                                  "give one to three increasing counts, e.g. --points 1000 30000 60000")
    target = get_target(args.target)
    check_onnx_file(args.onnx, "--onnx")
    if target.backend == "onnxruntime":
        from sparsefuse.targets.backends import onnxruntime as ort_backend

        built = ort_backend.build(
            args.onnx, target, ort_backend.OrtOptions(intra_op_threads=args.threads), args.out
        )
        console.print(
            f"built {target.tag} with {', '.join(built.providers)}; optimized model: {built.optimized_path}"
        )
        return 0
    from sparsefuse.targets.backends import tensorrt as trt_backend
    from sparsefuse.targets.trt_plan import TrtOptions

    options = TrtOptions(
        precision=args.precision,
        sparsity=args.sparsity,
        dla_core=args.dla_core,
        builder_optimization_level=args.opt_level,
        workspace_mib=args.workspace_mib,
        dynamic_dims=(("points", tuple(args.points)),) if args.points else (),
        plugin_library=args.plugin_lib,
        plugin_loading=args.plugin_loading,
    )
    built = trt_backend.build(args.onnx, target, options, args.out)
    for warning in built.plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if built.engine_path:
        console.print(f"engine: {built.engine_path} ({len(built.sparse_layers)} layers picked 2:4 kernels)")
    else:
        console.print(
            f"TensorRT is not available here: run {built.recipes.build_script} on the target, "
            f"then {built.recipes.profile_script}"
        )
    return 0
