"""Target registry: deployment targets are records loaded from TOML (STYLE.md, "Targets are records").

Built-in targets live in targets/registry/*.toml (one file per tag). A user target is any TOML
file with the same fields, passed as a path (``--target path/to/my.toml``). Every number carries
a source in ``[sources]``; validation names the offending field.

Units: tensor rates in TFLOPS (FP16) / TOPS (INT8) at the highest power mode, ``dram_gbps`` in
GB/s, ``memory_gb`` in GB, ``tdp_w`` and power-mode budgets in W.
"""

from __future__ import annotations

import functools
import math
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sparsefuse.errors import SparsefuseError
from sparsefuse.layout import TAG_FORM, check_tag, tag_problem, target_slug

REGISTRY_DIR = Path(__file__).resolve().parent / "registry"
BACKENDS = ("onnxruntime", "tensorrt")
KINDS = ("cpu", "desktop", "jetson")
VERSION_FIELDS = ("tensorrt", "jetpack", "cuda")
# A version is dotted numbers only ("10.3", "11.1.0"): it is printed into generated shell scripts.
_VERSION = re.compile(r"[0-9]{1,4}(\.[0-9]{1,6}){0,3}")
# Fields that are numbers measured or quoted from somewhere: each needs an entry in [sources].
SOURCED_FIELDS = (
    "sm",
    "cuda",
    "tensorrt",
    "jetpack",
    "workspace_mib",
    "fp16_dense_tflops",
    "fp16_sparse_tflops",
    "int8_dense_tops",
    "int8_sparse_tops",
    "fp32_tflops",
    "dram_gbps",
    "memory_gb",
    "dla_cores",
    "dla_int8_sparse_tops",
    "tdp_w",
    "power_modes",
)


@dataclass(frozen=True)
class PowerMode:
    """One nvpmodel power mode (Jetson) or board power limit (desktop). budget_w: W."""

    name: str
    budget_w: float
    nvpmodel_id: int | None = None


@dataclass(frozen=True)
class Target:
    """One deployment target. Rates are peak tensor-core rates; 0 means "not supported"."""

    tag: str
    name: str
    kind: str
    backend: str
    sm: int | None = None
    cuda: str | None = None
    tensorrt: str | None = None
    jetpack: str | None = None
    fp16_dense_tflops: float = 0.0
    fp16_sparse_tflops: float = 0.0
    int8_dense_tops: float = 0.0
    int8_sparse_tops: float = 0.0
    fp32_tflops: float = 0.0
    dram_gbps: float = 0.0
    memory_gb: float = 0.0
    dla_cores: int = 0
    dla_int8_sparse_tops: float = 0.0
    tdp_w: float = 0.0
    power_modes: tuple[PowerMode, ...] = ()
    workspace_mib: int | None = None
    notes: str = ""
    sources: tuple[tuple[str, str], ...] = ()
    path: str = ""

    def __post_init__(self) -> None:
        check_tag(self.tag)  # OUT paths and script lines derive from the tag, however it was built

    @property
    def slug(self) -> str:
        """The tag as a file name: ``jetson/agx-orin-64gb`` -> ``jetson_agx-orin-64gb``."""
        return target_slug(self.tag)

    def source(self, field_name: str) -> str:
        """Where the value of ``field_name`` comes from ("" if unsourced)."""
        return dict(self.sources).get(field_name, "")

    @property
    def is_jetson(self) -> bool:
        return self.kind == "jetson"

    def features(self) -> dict[str, bool]:
        """What the SM architecture and the typical TensorRT version imply (docs/sources.md S1, S3, S7)."""
        trt = _version_tuple(self.tensorrt)
        sm = self.sm or 0
        return {
            "tensor_cores": sm >= 70,
            "int8_tensor_cores": sm >= 72,
            # 2:4 sparse tensor cores arrived with Ampere (SM 8.x); Volta/Turing have none.
            "sparse_2to4": sm >= 80,
            "fp8": sm >= 89,
            "dla": self.dla_cores > 0,
            # IPluginV3 is the TensorRT 10 plugin interface; TRT 8.x only has IPluginV2DynamicExt.
            "ipluginv3": trt >= (10, 0),
            "trtexec_dynamic_plugins": trt >= (10, 0),
            "builder_optimization_level": trt >= (8, 6),
            "python_plugins": trt >= (10, 6),
            "python_aot_plugins": trt >= (10, 9),
        }


def _version_tuple(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _fail(where: str, field_name: str, problem: str, hint: str) -> SparsefuseError:
    return SparsefuseError(f"target {where}: field '{field_name}' {problem}", hint)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "tag": (str,),
    "name": (str,),
    "kind": (str,),
    "backend": (str,),
    "sm": (int,),
    "cuda": (str,),
    "tensorrt": (str,),
    "jetpack": (str,),
    "fp16_dense_tflops": (int, float),
    "fp16_sparse_tflops": (int, float),
    "int8_dense_tops": (int, float),
    "int8_sparse_tops": (int, float),
    "fp32_tflops": (int, float),
    "dram_gbps": (int, float),
    "memory_gb": (int, float),
    "dla_cores": (int,),
    "dla_int8_sparse_tops": (int, float),
    "tdp_w": (int, float),
    "workspace_mib": (int,),
    "notes": (str,),
}


def target_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Target:
    """Validate one target record (as read from TOML) and build the frozen Target."""
    known = {f.name for f in fields(Target)} - {"path"}
    for key in raw:
        if key not in known:
            raise _fail(where, key, "is not a target field", f"known fields: {', '.join(sorted(known))}")
    for key in ("tag", "name", "kind", "backend"):
        if key not in raw:
            raise _fail(where, key, "is missing", "every target needs tag, name, kind and backend")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("sources", "power_modes"):
            continue
        types = _FIELD_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise _fail(
                where,
                key,
                f"has type {type(value).__name__}",
                f"expected {' or '.join(t.__name__ for t in types)}",
            )
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise _fail(where, key, f"is not a finite number ({value})", "write a plain number, e.g. 20.0")
        if isinstance(value, (int, float)) and value < 0:
            raise _fail(where, key, f"is negative ({value})", "rates, sizes and counts are >= 0")
        values[key] = float(value) if float in types else value
    problem = tag_problem(values["tag"])
    if problem is not None:
        raise _fail(where, "tag", problem, f"a tag is {TAG_FORM}")
    if values["kind"] not in KINDS:
        raise _fail(where, "kind", f"is '{values['kind']}'", f"allowed: {', '.join(KINDS)}")
    if values["backend"] not in BACKENDS:
        raise _fail(where, "backend", f"is '{values['backend']}'", f"allowed: {', '.join(BACKENDS)}")
    if values["backend"] == "tensorrt" and ("sm" not in values or "tensorrt" not in values):
        missing = "sm" if "sm" not in values else "tensorrt"
        raise _fail(
            where, missing, "is missing", "a TensorRT target needs its SM arch (e.g. 87) and TRT version"
        )
    for key in VERSION_FIELDS:
        if key in values and _VERSION.fullmatch(values[key]) is None:
            raise _fail(
                where, key, f"is {values[key]!r}, not a version", 'write a version such as "10.3" or "11.1.0"'
            )
    if values.get("fp16_sparse_tflops", 0.0) and values.get("fp16_sparse_tflops", 0.0) < values.get(
        "fp16_dense_tflops", 0.0
    ):
        raise _fail(where, "fp16_sparse_tflops", "is below the dense rate", "2:4 peak is >= dense peak")
    values["power_modes"] = _power_modes(raw.get("power_modes", []), where)
    sources = raw.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) and v for v in sources.values()):
        raise _fail(
            where, "sources", "must be a table of non-empty strings", 'e.g. dram_gbps = "vendor datasheet …"'
        )
    for key in SOURCED_FIELDS:
        present = key in raw and raw[key] not in (0, 0.0, [], "")
        if present and key not in sources:
            raise _fail(
                where, f"sources.{key}", "is missing", f"give a source for {key} (datasheet, paper, note)"
            )
    return Target(**values, sources=tuple(sorted(sources.items())), path=str(where))


def _power_modes(raw: Any, where: str) -> tuple[PowerMode, ...]:
    if not isinstance(raw, list):
        raise _fail(
            where, "power_modes", "must be an array of tables", "[[power_modes]] name = … budget_w = …"
        )
    modes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _fail(where, f"power_modes[{i}].name", "is missing", "each power mode needs a name")
        budget = item.get("budget_w")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf:
            raise _fail(
                where, f"power_modes[{i}].budget_w", "must be a positive finite number", "watts, e.g. 30"
            )
        mode_id = item.get("nvpmodel_id")
        if mode_id is not None and (isinstance(mode_id, bool) or not isinstance(mode_id, int)):
            raise _fail(where, f"power_modes[{i}].nvpmodel_id", "must be an integer", "see `nvpmodel -q`")
        modes.append(PowerMode(name=item["name"], budget_w=float(budget), nvpmodel_id=mode_id))
    return tuple(modes)


def load_target_file(path: str | Path) -> Target:
    """Load and validate one TOML target file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparsefuseError(
            f"target file not found: {path}", "pass a registry tag or an existing .toml"
        ) from None
    except IsADirectoryError:
        raise SparsefuseError(f"target file {path} is a directory", "pass a .toml file") from None
    except UnicodeDecodeError as exc:
        raise SparsefuseError(f"target file {path} is not UTF-8 text (byte {exc.start})",
                              "save the TOML as UTF-8") from None
    except OSError as exc:
        raise SparsefuseError(f"cannot read target file {path}: {exc.strerror or exc}",
                              "pass a readable .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SparsefuseError(f"target file {path} is not valid TOML: {exc}", "fix the TOML syntax") from None
    return target_from_dict(raw, where=str(path))


@functools.cache
def _builtin() -> dict[str, Target]:
    targets = {}
    for path in sorted(REGISTRY_DIR.glob("*.toml")):
        target = load_target_file(path)
        targets[target.tag] = target
    return targets


def list_targets() -> list[Target]:
    """All built-in targets, sorted by tag."""
    return [t for _, t in sorted(_builtin().items())]


def get_target(tag_or_path: str | Target) -> Target:
    """A registry tag (``jetson/agx-orin-64gb``) or a path to a user TOML file."""
    if isinstance(tag_or_path, Target):
        return tag_or_path
    text = str(tag_or_path)
    if text.endswith(".toml"):
        return load_target_file(text)
    builtin = _builtin()
    if text in builtin:
        return builtin[text]
    raise SparsefuseError(
        f"unknown target '{text}'; known targets: {', '.join(sorted(builtin))}",
        "use one of the known tags, or describe your device in a TOML file (see targets/registry/*.toml) "
        "and pass its path",
    )
