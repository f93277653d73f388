"""TensorRT backend. Thin and gated: tensorrt is never imported at module import time.

Where ``import tensorrt`` works and a CUDA device initializes (probed in a subprocess, since a
failed CUDA init can crash the process), ``build`` composes polygraphy's loaders
(NetworkFromOnnxPath, CreateConfig, EngineFromNetwork) and uses the raw API only for what they
lack: dynamic plugin-library loading, the DLA core index, and the engine inspector. Otherwise it
writes the trtexec recipes to run on the target. It never writes an engine TensorRT did not make.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from sparsefuse.atomic import write_text
from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends import trtexec
from sparsefuse.targets.profiler import Profile, points_per_frame, time_runs
from sparsefuse.targets.registry import Target
from sparsefuse.targets.trt_plan import TrtBuildPlan, TrtOptions, make_plan

_PROBE = (
    "import tensorrt, ctypes; lib = ctypes.CDLL('libcudart.so'); n = ctypes.c_int(0); "
    "assert lib.cudaGetDeviceCount(ctypes.byref(n)) == 0 and n.value > 0; "
    "tensorrt.Builder(tensorrt.Logger(tensorrt.Logger.ERROR))"
)
_SPARSITY_RE = re.compile(
    r"\(Sparsity\)\s*(Layers eligible for sparse math"
    r"|TRT inference plan picked sparse implementation for layers):\s*(.*)"
)


@functools.cache
def tensorrt_available() -> bool:
    """True when tensorrt imports and a CUDA device initializes (checked in a subprocess)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:  # cheap: locating a package imports nothing
        return False
    for probe in (_PROBE, _PROBE.replace("libcudart.so", "libcudart.so.12")):
        try:
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if done.returncode == 0:
            return True
    return False


@dataclass(frozen=True)
class Built:
    """Result of a TensorRT build: a real engine (engine_path) or recipes to run on the target."""

    plan: TrtBuildPlan
    engine_path: Path | None
    recipes: trtexec.Recipes
    sparse_layers: tuple[str, ...] = ()
    eligible_layers: tuple[str, ...] = ()
    backend: str = "tensorrt"

    @property
    def target_tag(self) -> str:
        return self.plan.target_tag


def parse_sparsity_log(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(eligible layers, layers that picked sparse kernels) from TensorRT's "(Sparsity)" log lines."""
    eligible: list[str] = []
    picked: list[str] = []
    for match in _SPARSITY_RE.finditer(text):
        names = [n.strip() for n in match.group(2).split(",") if n.strip()]
        (eligible if match.group(1).startswith("Layers eligible") else picked).extend(names)
    return tuple(eligible), tuple(picked)


def polygraphy_api() -> SimpleNamespace:
    """The TensorRT and polygraphy names the build uses (replaced by a recording double in tests)."""
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        LoadPlugins,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
        SaveEngine,
    )
    from polygraphy.logger import G_LOGGER

    return SimpleNamespace(
        trt=trt,
        CreateConfig=CreateConfig,
        EngineFromNetwork=EngineFromNetwork,
        LoadPlugins=LoadPlugins,
        NetworkFromOnnxPath=NetworkFromOnnxPath,
        PostprocessConfig=PostprocessConfig,
        Profile=Profile,
        SaveEngine=SaveEngine,
        G_LOGGER=G_LOGGER,
    )


def _set_dla_core(core: int) -> Any:
    def apply(builder: Any, network: Any, config: Any) -> None:
        config.DLA_core = core

    return apply


def build_engine(plan: TrtBuildPlan, api: SimpleNamespace, plugin_library: str | None = None) -> Any:
    """Translate the plan into polygraphy/TensorRT calls, build, and save engine + cache + layers.

    Returns the deserialized engine. ``plugin_library`` is the local path of the plugin .so.
    """
    trt = api.trt
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if plan.plugin_library:
        library = plugin_library or plan.plugin_library
        if plan.plugin_loading == "dynamic":
            trt.get_plugin_registry().load_library(library)
        else:
            api.LoadPlugins(plugins=[library])()
    # Strongly typed: the graph's casts and Q/DQ decide each layer's precision (TensorRT 11 knows no
    # other way; on 10.x the plan asks for it where the graph is typed).
    network = api.NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=plan.strongly_typed or None)
    profiles = []
    for shape in plan.profiles:
        profiles.append(api.Profile().add(shape.name, min=shape.min, opt=shape.opt, max=shape.max))
    pools = {}
    if plan.workspace_mib:
        pools[trt.MemoryPoolType.WORKSPACE] = plan.workspace_mib * 2**20
    cache = str(plan.timing_cache_path) if plan.timing_cache else None
    config = api.CreateConfig(
        fp16=plan.fp16,
        int8=plan.int8,
        sparse_weights=plan.sparse_weights,
        profiles=profiles or None,
        load_timing_cache=cache if cache and os.path.exists(cache) else None,
        builder_optimization_level=plan.builder_optimization_level,
        memory_pool_limits=pools or None,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        use_dla=plan.dla_core is not None,
        allow_gpu_fallback=plan.gpu_fallback if plan.dla_core is not None else None,
    )
    if plan.dla_core is not None:
        config = api.PostprocessConfig(config, _set_dla_core(plan.dla_core))
    engine = api.EngineFromNetwork(network, config=config, save_timing_cache=cache)()
    # Written beside the destination and renamed, so an interrupted save never looks like an engine.
    partial = plan.engine_path.with_name(plan.engine_path.name + ".partial")
    api.SaveEngine(engine, str(partial))()
    if partial.exists():
        os.replace(partial, plan.engine_path)
    inspector = engine.create_engine_inspector()
    layers = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    write_text(plan.layers_path, layers if isinstance(layers, str) else json.dumps(layers))
    return engine


def build(
    onnx_path: str | os.PathLike[str],
    target: Target,
    options: TrtOptions | None = None,
    out_dir: str | os.PathLike[str] = ".",
    plugin_library: str | None = None,
) -> Built:
    """Build a real engine where TensorRT + GPU exist; always write the trtexec recipes too."""
    plan = make_plan(onnx_path, target, options or TrtOptions(), out_dir)
    recipes = trtexec.write_recipes(plan)
    if not tensorrt_available():
        return Built(plan=plan, engine_path=None, recipes=recipes)
    api = polygraphy_api()
    log = api.G_LOGGER
    previous_file = log.log_file
    log.log_file = str(plan.build_log_path)
    try:
        with log.verbosity(log.VERBOSE):  # TensorRT's INFO lines (incl. "(Sparsity)") are VERBOSE here
            build_engine(plan, api, plugin_library)
    finally:
        log.log_file = previous_file
    eligible, picked = parse_sparsity_log(plan.build_log_path.read_text(errors="replace"))
    return Built(plan, plan.engine_path, recipes, sparse_layers=picked, eligible_layers=eligible)


def _runner(built: Built) -> Any:
    if built.engine_path is None:
        raise SparsefuseError(
            f"no TensorRT engine for {built.target_tag} on this machine (TensorRT or a GPU is missing)",
            f"run {built.recipes.build_script} and {built.recipes.profile_script} on the target",
        )
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(built.engine_path))))


def run(built: Built, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with _runner(built) as runner:
        return {k: np.asarray(v) for k, v in runner.infer(dict(feeds)).items()}


def profile(
    built: Built,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    runs: int = 50,
    warmup: int = 5,
    duration_s: float | None = None,
    lidar_points_input: str = "points",
) -> Profile:
    """Host-side wall time per inference through TrtRunner (includes H2D/D2H copies)."""
    import tensorrt as trt

    feeds_list = [dict(f) for f in feeds_list]
    with _runner(built) as runner:
        samples, frames = time_runs(
            lambda i: runner.infer(feeds_list[i]), len(feeds_list), warmup, runs, duration_s
        )
    points = points_per_frame(feeds_list, frames, lidar_points_input)
    return Profile(
        label="measured",
        target=built.target_tag,
        backend="tensorrt",
        device=_gpu_name(),
        versions=(("tensorrt", trt.__version__),),
        samples_ms=tuple(samples),
        lidar_points=points,
        notes=("host wall time per TrtRunner.infer, including host<->device copies",),
    )


def _gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        return (
            out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "CUDA GPU"
        )
    except OSError:
        return "CUDA GPU"
