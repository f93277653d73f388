"""trtexec recipes: build_engine.sh and profile_engine.sh, the exact equivalent of a TrtBuildPlan.

Written where TensorRT is absent (always on the CPU dev machine) so the engine can be built and
profiled on the target itself. Flag names follow TensorRT 10 trtexec (samples/common/
sampleOptions.cpp help text); for TensorRT 8.x targets the plugin flag is --plugins and
--builderOptimizationLevel is left out (it arrived in 8.6).

Every value a script carries (paths, input names, tag, versions) is quoted with ``shlex.quote``;
only the scripts' own variables ($HERE, $ONNX, $PLUGIN_LIB, $TRTEXEC) expand when they run.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from sparsefuse.atomic import atomic_path
from sparsefuse.targets.trt_plan import ShapeRange, TrtBuildPlan

BUILD_SCRIPT = "build_engine.sh"
PROFILE_SCRIPT = "profile_engine.sh"
TRTEXEC_PROFILE = "profile_trtexec.json"
TRTEXEC_TIMES = "times_trtexec.json"
RUNTIME_LAYERS = "layers_runtime.json"


@dataclass(frozen=True)
class Var:
    """A shell variable the script itself sets (ONNX, PLUGIN_LIB, HERE): expanded when it runs."""

    name: str


# One trtexec argument: literal text (always shell-quoted, never evaluated) and script variables.
Arg = tuple[str | Var, ...]
ONNX, PLUGIN_LIB, HERE = Var("ONNX"), Var("PLUGIN_LIB"), Var("HERE")
# Characters that are literal inside "${ENV:-...}" too (shlex.quote leaves them unquoted).
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")


@dataclass(frozen=True)
class Recipes:
    build_script: Path
    profile_script: Path
    build_argv: tuple[str, ...]
    profile_argv: tuple[str, ...]


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def shapes_flag(flag: str, ranges: tuple[ShapeRange, ...], pick: str) -> str:
    """``--minShapes=points:1024x4,other:...`` (``pick`` is "min", "opt" or "max")."""
    return f"--{flag}=" + ",".join(f"{r.name}:{_dims(getattr(r, pick))}" for r in ranges)


def plugin_flag(plan: TrtBuildPlan) -> str:
    """--dynamicPlugins= / --staticPlugins= on TensorRT 10; --plugins= before (deprecated in 10)."""
    major = int(plan.tensorrt_version.split(".")[0]) if plan.tensorrt_version else 10
    if major < 10:
        return "--plugins="
    return f"--{plan.plugin_loading}Plugins="


def _build_args(plan: TrtBuildPlan) -> list[Arg]:
    """trtexec arguments that build the engine described by ``plan``."""
    args: list[Arg] = [("--onnx=", ONNX)]
    if plan.plugin_library:
        args.append((plugin_flag(plan), PLUGIN_LIB))
    flags = [("--stronglyTyped", plan.strongly_typed), ("--fp16", plan.fp16), ("--int8", plan.int8),
             ("--sparsity=enable", plan.sparse_weights)]
    args += [(flag,) for flag, on in flags if on]
    if plan.profiles:
        args += [
            (shapes_flag(f, plan.profiles, p),)
            for f, p in (("minShapes", "min"), ("optShapes", "opt"), ("maxShapes", "max"))
        ]
    if plan.timing_cache:
        args.append(("--timingCacheFile=", HERE, "/timing.cache"))
    if plan.dla_core is not None:
        args.append((f"--useDLACore={plan.dla_core}",))
        if plan.gpu_fallback:
            args.append(("--allowGPUFallback",))
    if plan.workspace_mib:
        args.append((f"--memPoolSize=workspace:{plan.workspace_mib}",))  # bare number = MiB
    if plan.builder_optimization_level is not None:
        args.append((f"--builderOptimizationLevel={plan.builder_optimization_level}",))
    return args + [
        ("--profilingVerbosity=detailed",),
        ("--saveEngine=", HERE, "/model.plan"),
        ("--exportLayerInfo=", HERE, "/layers.json"),
        ("--skipInference",),
    ]


def _profile_args(plan: TrtBuildPlan) -> list[Arg]:
    """trtexec arguments that time the saved engine at the profile's opt shapes."""
    args: list[Arg] = [("--loadEngine=", HERE, "/model.plan")]
    if plan.plugin_library:
        args.append((plugin_flag(plan), PLUGIN_LIB))
    if plan.profiles:
        args.append((shapes_flag("shapes", plan.profiles, "opt"),))
    if plan.dla_core is not None:
        args.append((f"--useDLACore={plan.dla_core}",))
    return args + [
        (f"--warmUp={plan.profile_warmup_ms}",),
        (f"--duration={plan.profile_duration_s}",),
        *[(flag,) for flag in ("--useCudaGraph", "--noDataTransfers", "--useSpinWait",
                                "--separateProfileRun", "--dumpProfile")],
        ("--exportProfile=", HERE, f"/{TRTEXEC_PROFILE}"),
        ("--exportTimes=", HERE, f"/{TRTEXEC_TIMES}"),
        ("--exportLayerInfo=", HERE, f"/{RUNTIME_LAYERS}"),
    ]


def _plain(arg: Arg) -> str:
    """The argument as text with ``$VAR`` placeholders (what Recipes records)."""
    text = ""
    for part, after in zip(arg, [*arg[1:], ""], strict=True):
        if isinstance(part, Var):
            # ${VAR} where a name character follows, so the shell reads the same variable name.
            glued = isinstance(after, str) and _NAME_CHAR.match(after) is not None
            text += f"${{{part.name}}}" if glued else f"${part.name}"
        else:
            text += part
    return text


def _is_plain(arg: Arg) -> bool:
    """True when every literal part is made of characters no shell context treats specially."""
    return all(isinstance(p, Var) or _PLAIN.fullmatch(p) for p in arg)


def _shell(arg: Arg) -> str:
    """The argument as one shell word: "..." around plain text and $VARs; otherwise the literal parts
    shlex-quoted and the variables double-quoted."""
    if _is_plain(arg):
        return f'"{_plain(arg)}"'
    return "".join(f'"${p.name}"' if isinstance(p, Var) else shlex.quote(p) for p in arg if p != "")


def build_argv(plan: TrtBuildPlan) -> list[str]:
    """trtexec arguments that build the engine described by ``plan`` (shell variables unexpanded)."""
    return [_plain(a) for a in _build_args(plan)]


def profile_argv(plan: TrtBuildPlan) -> list[str]:
    """trtexec arguments that time the saved engine (shell variables unexpanded)."""
    return [_plain(a) for a in _profile_args(plan)]


_PREAMBLE = """#!/usr/bin/env bash
# Generated by sparsefuse for target {tag} (TensorRT {trt} expected). Run it ON the target.
# Environment overrides: TRTEXEC (path to trtexec), ONNX, SPARSEFUSE_TRT_PLUGINS (plugin library).
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "error: trtexec not found (set TRTEXEC=/path/to/trtexec)" >&2; exit 2
fi
"""

_PLUGIN_CHECK = """if [ ! -f "$PLUGIN_LIB" ]; then
  echo "error: plugin library $PLUGIN_LIB not found" >&2
  echo "       build it with CMake on the target (docs/native-build.md)" >&2
  echo {set_hint} >&2
  exit 2
fi
"""


def _env_default(var: str, env: str, default: Arg) -> str:
    """Shell lines that set ``var`` from the environment variable ``env``, else to ``default``."""
    if _is_plain(default):
        return f'{var}="${{{env}:-{_plain(default)}}}"\n'
    # Inside "${ENV:-...}" quotes are literal and $(...) still runs: assign quoted text on its own.
    return f'{var}="${{{env}:-}}"\nif [ -z "${var}" ]; then {var}={_shell(default)}; fi\n'


def _plugin_check(library: str) -> str:
    """Shell lines that resolve PLUGIN_LIB: the env override, else the given absolute path, else
    the library's file name next to the script."""
    path = Path(library)
    default: Arg = (str(path),) if path.is_absolute() else (HERE, "/" + path.name)
    hint = shlex.quote(f"       or set SPARSEFUSE_TRT_PLUGINS=/path/to/{path.name}")
    return _env_default("PLUGIN_LIB", "SPARSEFUSE_TRT_PLUGINS", default) + _PLUGIN_CHECK.format(set_hint=hint)


def _join(args: list[Arg]) -> str:
    return " \\\n  ".join(_shell(a) for a in args)


def _comment(text: str) -> str:
    """``text`` safe on a comment line: a line break would end the comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _preamble(plan: TrtBuildPlan) -> str:
    return _PREAMBLE.format(tag=_comment(plan.target_tag), trt=_comment(plan.tensorrt_version))


def render_build_script(plan: TrtBuildPlan) -> str:
    onnx_rel = os.path.relpath(plan.onnx_path, plan.out_dir)
    lines = [_preamble(plan), _env_default("ONNX", "ONNX", (HERE, "/" + onnx_rel))]
    if plan.plugin_library:
        lines.append(_plugin_check(plan.plugin_library))
    for warning in plan.warnings:
        lines.append(f"echo {shlex.quote('warning: ' + warning)} >&2\n")
    lines.append('"$TRTEXEC" \\\n  ' + _join(_build_args(plan)) + ' 2>&1 | tee "$HERE/build.log"\n')
    lines.append(
        "# Which layers TensorRT considered for, and picked, 2:4 sparse kernels:\n"
        'grep -F "(Sparsity)" "$HERE/build.log" > "$HERE/sparsity.log" || true\n'
        'grep -o "TensorRT v[0-9]*" "$HERE/build.log" | head -n 1 || true\n'
        'echo "engine: $HERE/model.plan"\n'
    )
    return "".join(lines)


_ENV_JETSON = """{
  date -u +%Y-%m-%dT%H:%M:%SZ
  cat /etc/nv_tegra_release 2>/dev/null || true
  echo "--- nvpmodel -q"; nvpmodel -q 2>&1 || sudo -n nvpmodel -q 2>&1 || true
  echo "--- jetson_clocks --show"; sudo -n jetson_clocks --show 2>&1 || jetson_clocks --show 2>&1 || true
  echo "--- tegrastats"; timeout 3 tegrastats --interval 1000 2>&1 | head -n 2 || true
} > "$HERE/device_state.txt"
"""

_ENV_DESKTOP = """{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --format=csv \\
    --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit,temperature.gpu 2>&1 || true
} > "$HERE/device_state.txt"
"""


def render_profile_script(plan: TrtBuildPlan) -> str:
    lines = [_preamble(plan)]
    if plan.plugin_library:
        lines.append(_plugin_check(plan.plugin_library))
    lines.append(
        'if [ ! -f "$HERE/model.plan" ]; then echo "error: run build_engine.sh first" >&2; exit 2; fi\n'
    )
    if plan.is_jetson:
        lines.append(
            "# Latency on Jetson depends on the power mode and clocks: record both with the result.\n"
        )
        lines.append(_ENV_JETSON)
    else:
        lines.append(_ENV_DESKTOP)
    lines.append('"$TRTEXEC" \\\n  ' + _join(_profile_args(plan)) + ' 2>&1 | tee "$HERE/profile.log"\n')
    lines.append(
        "printf 'import with: sparsefuse profile --import-trtexec %q --target %q --out profile.json\\n' "
        f'"$HERE" {shlex.quote(plan.target_tag)}\n'
    )
    return "".join(lines)


def write_recipes(plan: TrtBuildPlan) -> Recipes:
    """Write build_engine.sh and profile_engine.sh (mode 755) into plan.out_dir."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (
        (BUILD_SCRIPT, render_build_script(plan)),
        (PROFILE_SCRIPT, render_profile_script(plan)),
    ):
        dest = plan.out_dir / name
        with atomic_path(dest) as tmp:
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(0o755)
        paths.append(dest)
    return Recipes(paths[0], paths[1], tuple(build_argv(plan)), tuple(profile_argv(plan)))
