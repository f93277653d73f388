"""One engine build, described once: TensorRT builder settings derived from the target and options.

The same TrtBuildPlan feeds both the in-process build (targets/backends/tensorrt.py, where
TensorRT and a GPU exist) and the trtexec recipe (targets/backends/trtexec.py), so the two cannot
drift apart. Everything here is pure: no TensorRT import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.registry import Target

PRECISIONS = ("fp32", "fp16", "int8")
PLUGIN_LIBRARY_NAME = "libsparsefuse_trt_plugins.so"
CUSTOM_DOMAIN = "sparsefuse"
# Dynamic-dimension ranges from calibration statistics: max gets this headroom, and both ends
# are rounded to this granularity so that small drifts in point counts reuse one profile.
SHAPE_HEADROOM = 1.25
SHAPE_GRANULARITY = 256


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shape of one network input for an optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise SparsefuseError(
                f"shape range for '{self.name}' mixes ranks", "give min/opt/max of equal rank"
            )
        if any(not (a <= b <= c) for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise SparsefuseError(
                f"shape range for '{self.name}' is not ordered: {self.min} / {self.opt} / {self.max}",
                "each dimension needs min <= opt <= max",
            )


@dataclass(frozen=True)
class TrtOptions:
    """Engine build options. ``None`` fields take the target's defaults.

    precision: None (default: follow the graph, see ``precision_flags``), "fp16", "int8" (explicit
        Q/DQ graphs only) or "fp32".
    sparsity: use 2:4 sparse tactics (default: on where the target has sparse tensor cores).
    dla_core: run on this DLA core with GPU fallback (Jetson Orin / Xavier only).
    dynamic_dims: observed sizes of dynamic input dimensions, e.g. {"points": [31000, 35012]}
        (LiDAR points per calibration frame); min/opt/max come from them.
    shape_ranges: explicit profiles; override dynamic_dims for the inputs they name.
    workspace_mib: builder workspace pool limit [MiB] (default: the target's workspace_mib).
    plugin_library: path of libsparsefuse_trt_plugins.so as seen on the target.
    plugin_loading: "static" (default: dlopen, the library self-registers; --staticPlugins, or
        --plugins before TensorRT 10) or "dynamic" (IPluginRegistry.loadLibrary via the library's
        getCreators; --dynamicPlugins, TensorRT >= 10).
    """

    precision: str | None = None
    sparsity: bool | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    builder_optimization_level: int = 3
    workspace_mib: int | None = None
    timing_cache: bool = True
    dynamic_dims: tuple[tuple[str, tuple[int, ...]], ...] = ()
    shape_ranges: tuple[ShapeRange, ...] = ()
    plugin_library: str | None = None
    plugin_loading: str | None = None
    profile_duration_s: int = 10
    profile_warmup_ms: int = 500

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise SparsefuseError(
                f"precision '{self.precision}' is not supported", f"choose {', '.join(PRECISIONS)}"
            )
        if not 0 <= self.builder_optimization_level <= 5:
            raise SparsefuseError(
                f"builder_optimization_level {self.builder_optimization_level} is out of range", "use 0..5"
            )
        if self.plugin_loading not in (None, "static", "dynamic"):
            raise SparsefuseError(
                f"plugin_loading '{self.plugin_loading}' is unknown", "use static or dynamic"
            )
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise SparsefuseError("workspace_mib must be positive", "give the pool limit in MiB, e.g. 2048")

    @staticmethod
    def with_point_counts(counts: Sequence[int], input_name: str = "points", **kwargs: object) -> TrtOptions:
        """Options whose optimization profile for ``input_name`` comes from observed point counts."""
        return TrtOptions(dynamic_dims=((input_name, tuple(int(c) for c in counts)),), **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrtBuildPlan:
    """Everything a TensorRT build needs, resolved against one target. Paths are absolute."""

    target_tag: str
    tensorrt_version: str
    onnx_path: Path
    out_dir: Path
    fp16: bool
    int8: bool
    sparse_weights: bool
    dla_core: int | None
    gpu_fallback: bool
    builder_optimization_level: int | None
    workspace_mib: int | None
    profiles: tuple[ShapeRange, ...]
    plugin_library: str | None
    plugin_loading: str
    timing_cache: bool
    profile_duration_s: int
    profile_warmup_ms: int
    is_jetson: bool
    warnings: tuple[str, ...] = field(default=())
    strongly_typed: bool = False  # trtexec --stronglyTyped / the STRONGLY_TYPED network flag

    @property
    def engine_path(self) -> Path:
        return self.out_dir / "model.plan"

    @property
    def timing_cache_path(self) -> Path:
        return self.out_dir / "timing.cache"

    @property
    def layers_path(self) -> Path:
        return self.out_dir / "layers.json"

    @property
    def build_log_path(self) -> Path:
        return self.out_dir / "build.log"


def _graph_facts(onnx_path: Path) -> tuple[dict[str, list[int | str]], bool, bool]:
    """(input shapes with dim_param names for dynamic dims, has custom nodes, has Q/DQ nodes)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int | str]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims: list[int | str] = []
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{value.name}_{i}"))
        shapes[value.name] = dims
    custom = any(n.domain == CUSTOM_DOMAIN for n in model.graph.node)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return shapes, custom, qdq


def graph_precision(onnx_path: str | Path) -> str:
    """The precision the graph itself carries: "int8" (explicit Q/DQ), "fp16" (float16 tensors or
    casts: a strongly typed mixed-precision graph from the precision stage) or "fp32" (untyped)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = model.graph.node
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        return "int8"
    half = onnx.TensorProto.FLOAT16
    casts = any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
                for n in nodes)
    inits = any(i.data_type == half for i in model.graph.initializer)
    return "fp16" if casts or inits else "fp32"


def tensorrt_release(version: str | None) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string ("10.3" -> (10, 3)); (10, 0) when unknown."""
    parts = [int(p) for p in (version or "").split(".")[:2] if p.isdigit()]
    return (parts[0], parts[1] if len(parts) > 1 else 0) if parts else (10, 0)


# --stronglyTyped exists in trtexec from TensorRT 10.12; TensorRT 11 has only strong typing.
STRONGLY_TYPED_FROM = (10, 12)
STRONG_ONLY_FROM = (11, 0)


def precision_flags(
    release: tuple[int, int], requested: str | None, carried: str
) -> tuple[bool, bool, bool, str]:
    """(fp16 flag, int8 flag, strongly typed, note) for a build: the graph's own precision wins
    where TensorRT can honour it (docs/design.md §6).

    - TensorRT >= 11: strongly typed only, never --fp16/--int8 (they were removed);
    - 10.12 .. 10.x: --stronglyTyped for a typed graph (fp16 casts or Q/DQ), legacy flags otherwise;
    - older: legacy flags (the graph's FP32 islands are then a hint TensorRT may override).
    ``requested`` None follows the graph (an untyped graph on TensorRT 10 builds with --fp16, as
    before); "fp32" asks for no reduced precision.
    """
    if release >= STRONG_ONLY_FROM:
        note = ""
        if requested in ("fp16", "int8") and carried == "fp32":
            note = (f"TensorRT {release[0]} is strongly typed: this FP32 graph builds an FP32 engine; "
                    f"compile with --precision {requested} to put the precision in the graph")
        return False, False, True, note
    typed = carried in ("fp16", "int8")
    if typed and release >= STRONGLY_TYPED_FROM:
        return False, False, True, ""
    precision = requested or ("int8" if carried == "int8" else "fp16")
    note = ""
    if typed:
        note = (f"TensorRT {release[0]}.{release[1]} has no --stronglyTyped (from 10.12): the graph's "
                f"{carried} types are built with the legacy --{precision} flag, which may override its "
                "FP32 islands")
    return precision in ("fp16", "int8"), precision == "int8", False, note


def range_from_counts(counts: Sequence[int]) -> tuple[int, int, int]:
    """(min, opt, max) of a dynamic dimension from observed sizes.

    min: smallest observed, rounded down to SHAPE_GRANULARITY (at least 1); opt: the median;
    max: largest observed x SHAPE_HEADROOM, rounded up to SHAPE_GRANULARITY.
    """
    if not counts or min(counts) < 0:
        raise SparsefuseError("no observed sizes for a dynamic dimension", "pass calibration point counts")
    ordered = sorted(int(c) for c in counts)
    g = SHAPE_GRANULARITY
    lo = max(1, (ordered[0] // g) * g)
    opt = max(lo, ordered[len(ordered) // 2])
    hi = max(g, math.ceil(max(opt, ordered[-1] * SHAPE_HEADROOM) / g) * g)
    return lo, opt, hi


def profiles_for(
    input_shapes: Mapping[str, Sequence[int | str]],
    dynamic_dims: Mapping[str, Sequence[int]],
    explicit: Sequence[ShapeRange],
) -> tuple[ShapeRange, ...]:
    """One optimization profile: explicit ranges win, then ranges from observed sizes.

    A dynamic input without either is an error: TensorRT cannot build it without a range.
    """
    by_name = {r.name: r for r in explicit}
    out: list[ShapeRange] = []
    for name, dims in input_shapes.items():
        if name in by_name:
            out.append(by_name[name])
            continue
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
        if not dynamic:
            continue
        if name not in dynamic_dims:
            raise SparsefuseError(
                f"input '{name}' has dynamic dimensions {dims} but no observed sizes",
                f"pass observed sizes for '{name}' (e.g. LiDAR point counts) or an explicit shape range",
            )
        lo, opt, hi = range_from_counts(dynamic_dims[name])

        def fill(
            size: int, dims: Sequence[int | str] = dims, dynamic: list[int] = dynamic
        ) -> tuple[int, ...]:
            return tuple(size if i in dynamic else int(d) for i, d in enumerate(dims))

        out.append(ShapeRange(name, fill(lo), fill(opt), fill(hi)))
    return tuple(out)


def make_plan(
    onnx_path: str | os.PathLike[str], target: Target, options: TrtOptions, out_dir: str | os.PathLike[str]
) -> TrtBuildPlan:
    """Resolve options against the target; raise SparsefuseError on impossible combinations."""
    if target.backend != "tensorrt":
        raise SparsefuseError(
            f"target '{target.tag}' uses the {target.backend} backend, not TensorRT",
            "pick a desktop/* or jetson/* target for engine builds",
        )
    onnx_path = Path(onnx_path).resolve()
    if not onnx_path.is_file():
        raise SparsefuseError(f"ONNX model not found: {onnx_path}", "run `sparsefuse compile` first")
    shapes, has_custom, has_qdq = _graph_facts(onnx_path)
    features = target.features()
    warnings: list[str] = []
    if options.precision == "int8" and not has_qdq:
        raise SparsefuseError(
            "precision int8 needs an explicitly quantized graph (QuantizeLinear/DequantizeLinear nodes)",
            "quantize the model first, or build with precision fp16",
        )
    carried = graph_precision(onnx_path)
    release = tensorrt_release(target.tensorrt)
    fp16, int8, strongly_typed, note = precision_flags(release, options.precision, carried)
    if note:
        warnings.append(note)
    if (options.precision == "int8" or carried == "int8") and not features["int8_tensor_cores"]:
        raise SparsefuseError(f"target '{target.tag}' has no INT8 tensor cores", "build with precision fp16")
    sparse = features["sparse_2to4"] if options.sparsity is None else options.sparsity
    if sparse and not features["sparse_2to4"]:
        raise SparsefuseError(
            f"target '{target.tag}' (SM {target.sm}) has no 2:4 sparse tensor cores",
            "2:4 sparsity needs SM >= 8.0 (Ampere or newer); drop --sparsity",
        )
    if options.dla_core is not None:
        if options.dla_core < 0 or options.dla_core >= target.dla_cores:
            raise SparsefuseError(
                f"dla_core={options.dla_core} out of range: '{target.tag}' has {target.dla_cores} DLA cores",
                "use a DLA core index below the target's dla_cores, or omit it",
            )
        if options.precision == "fp32" or (not fp16 and not strongly_typed):
            raise SparsefuseError("DLA runs FP16 or INT8 only", "build with precision fp16 for DLA")
        if not options.gpu_fallback:
            warnings.append(
                "DLA without GPU fallback: custom-op plugins cannot run on DLA, the build will fail"
            )
    if not features["ipluginv3"] and has_custom:
        warnings.append(
            f"TensorRT {target.tensorrt} predates IPluginV3 (TensorRT 10): sparsefuse plugins will not load"
        )
    # libsparsefuse_trt_plugins.so registers its creators at dlopen (REGISTER_TENSORRT_PLUGIN), so
    # static loading is the default; loading it dynamically as well would register them twice.
    loading = options.plugin_loading or "static"
    if loading == "dynamic" and not features["trtexec_dynamic_plugins"]:
        raise SparsefuseError(
            f"dynamic plugin loading needs TensorRT 10; target '{target.tag}' has {target.tensorrt}",
            "use plugin_loading static",
        )
    library = options.plugin_library or (PLUGIN_LIBRARY_NAME if has_custom else None)
    profiles = profiles_for(shapes, dict(options.dynamic_dims), options.shape_ranges)
    if options.dla_core is not None and profiles:
        warnings.append("DLA needs static shapes: layers with dynamic dimensions fall back to the GPU")
    level = options.builder_optimization_level if features["builder_optimization_level"] else None
    workspace = options.workspace_mib or target.workspace_mib
    return TrtBuildPlan(
        target_tag=target.tag,
        tensorrt_version=target.tensorrt or "",
        onnx_path=onnx_path,
        out_dir=Path(out_dir).resolve(),
        fp16=fp16,
        int8=int8,
        sparse_weights=bool(sparse),
        dla_core=options.dla_core,
        gpu_fallback=options.gpu_fallback,
        builder_optimization_level=level,
        workspace_mib=workspace,
        profiles=profiles,
        plugin_library=library,
        plugin_loading=loading,
        timing_cache=options.timing_cache,
        profile_duration_s=options.profile_duration_s,
        profile_warmup_ms=options.profile_warmup_ms,
        is_jetson=target.is_jetson,
        warnings=tuple(warnings),
        strongly_typed=strongly_typed,
    )
