"""Reading an untrusted hand-off bundle: the manifest's fields, its paths, golden data, models.

Everything here treats the bundle as hostile. Content that cannot be read as a bundle (wrong
types, missing keys, damaged .npz) raises SparsefuseError: ``verify`` exits 2. Content that reads
fine but fails a check (a path leaving the bundle, golden data that does not fit the model)
raises BundleError: ``verify`` exits 1. A bundle is verified against its own files only: every
path verify opens is a file listed (and hashed) in the manifest, strictly inside the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.compiler.bundle import (
    CONTROL_FILES,
    DAMAGED,
    MANIFEST,
    BundleError,
    read_bounded,
    strict_json,
    unsafe_name,
)
from sparsefuse.errors import SparsefuseError

MAX_GOLDEN_FRAMES = 10_000
MAX_NPZ_BYTES = 2 << 30  # one golden frame's arrays, uncompressed
MAX_NPZ_MEMBERS = 1024
MAX_MODEL_BYTES = 2 << 30  # protobuf's own limit: larger models need external data, which is refused
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a golden tensor may hold
ESCAPE_HINT = "a bundle is verified against its own files only; fetch it again from its maker"


# --- manifest fields ----------------------------------------------------------------------------


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _opt_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _target_info(value: Any) -> bool:
    if not isinstance(value, dict) or set(value) != {"backend", "sm", "tensorrt", "jetpack"}:
        return False
    return (
        value["backend"] in ("onnxruntime", "tensorrt")
        and (value["sm"] is None or _whole(value["sm"], 1, 1000))
        and _opt_text(value["tensorrt"])
        and _opt_text(value["jetpack"])
        and (value["backend"] != "tensorrt" or _text(value["tensorrt"]))
    )


def _git(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"commit", "dirty"}
        and _text(value["commit"])
        and (value["dirty"] is None or isinstance(value["dirty"], bool))
    )


# field -> (what it must be, check). Paths are only typed here; member_path checks where they lead.
# compile_config holds the compile machine's own paths (out, frames, weights): verify never opens them.
FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "target": ("a non-empty string", _text),
    "target_info": ("{backend: onnxruntime|tensorrt, sm, tensorrt, jetpack}", _target_info),
    "model": ("a path in the bundle", _text),
    "engine_dir": ("a path in the bundle", _text),
    "engine_files": (
        "a list of paths in the bundle",
        lambda v: isinstance(v, list) and len(v) <= 10_000 and all(_text(x) for x in v),
    ),
    "golden_frames": (
        f"a whole number from 1 to {MAX_GOLDEN_FRAMES}",
        lambda v: _whole(v, 1, MAX_GOLDEN_FRAMES),
    ),
    "created_utc": (
        "a UTC time YYYY-MM-DDTHH:MM:SSZ",
        lambda v: isinstance(v, str) and bool(_TIMESTAMP.fullmatch(v)),
    ),
    "lowered_by": ("a string", lambda v: isinstance(v, str)),
    "git": ("{commit: string, dirty: bool or null}", _git),
    "tool_versions": (
        "an object of version tables",
        lambda v: isinstance(v, dict) and all(isinstance(t, dict) for t in v.values()),
    ),
    "compile_config": ("an object", lambda v: isinstance(v, dict)),
    "profile_label": (
        'null, "measured" or "estimated"',
        lambda v: v is None or v in ("measured", "estimated"),
    ),
}
KNOWN = {"schema_version", "files", *FIELDS}


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(manifest: Mapping[str, Any]) -> None:
    """Every field present, of its type and range, and no unknown one (a manifest's meaning is
    fully understood before anything in the bundle is trusted)."""
    for key in FIELDS:
        if key not in manifest:
            raise SparsefuseError(f"{MANIFEST} has no {key!r} field", DAMAGED)
    unknown = sorted(set(manifest) - KNOWN)
    if unknown:
        raise SparsefuseError(
            f"{MANIFEST} has unknown field {unknown[0]!r}",
            "a newer sparsefuse made it (upgrade), or the manifest was edited; fetch it again",
        )
    for key, (what, ok) in FIELDS.items():
        if not ok(manifest[key]):
            raise SparsefuseError(
                f"{MANIFEST} field {key!r} is {_shown(manifest[key])}, expected {what}", DAMAGED
            )
    listed = sum(1 for rel in manifest["files"] if re.fullmatch(r"golden/inputs_\d+\.npz", rel))
    if manifest["golden_frames"] > listed:
        raise SparsefuseError(
            f"{MANIFEST} golden_frames is {manifest['golden_frames']}, but it lists {listed} input files",
            DAMAGED,
        )


# --- paths ---------------------------------------------------------------------------------------


def _inside(root: Path, rel: str, field: str) -> Path:
    """root/rel, once no component is a symbolic link and it resolves strictly inside root."""
    unsafe = unsafe_name(rel)
    if unsafe:
        raise BundleError(f"{MANIFEST} {field} {rel!r} is not a path in the bundle ({unsafe})", ESCAPE_HINT)
    current = root
    for part in rel.split("/"):
        current = current / part
        if current.is_symlink():
            raise BundleError(f"{MANIFEST} {field} {rel!r} goes through a symbolic link", ESCAPE_HINT)
    resolved = (root / rel).resolve()
    if root.resolve() not in resolved.parents:
        raise BundleError(f"{MANIFEST} {field} {rel!r} resolves outside the bundle", ESCAPE_HINT)
    return resolved


def member_path(root: Path, manifest: Mapping[str, Any], rel: str, field: str) -> Path:
    """The bundle file that ``field`` names: listed in the manifest, not a control file, strictly
    inside root. Whether it exists and matches its hash is the integrity check's job."""
    path = _inside(root, rel, field)
    if rel in CONTROL_FILES or rel not in manifest["files"]:
        raise BundleError(f"{MANIFEST} {field} {rel!r} is not a file listed in the manifest", ESCAPE_HINT)
    return path


def check_paths(root: Path, manifest: Mapping[str, Any]) -> None:
    """Every path field of the manifest leads to the bundle's own files (cheap: no reading)."""
    member_path(root, manifest, manifest["model"], "model")
    engine_dir = manifest["engine_dir"]
    _inside(root, engine_dir, "engine_dir")
    for rel in manifest["engine_files"]:
        member_path(root, manifest, rel, "engine_files")
        if not rel.startswith(engine_dir + "/"):
            raise BundleError(
                f"{MANIFEST} engine_files {rel!r} is not under engine_dir {engine_dir!r}", DAMAGED
            )
    member_path(root, manifest, "golden/tolerances.json", "golden tolerances")
    for i in range(manifest["golden_frames"]):
        member_path(root, manifest, f"golden/inputs_{i}.npz", f"golden frame {i}")
        member_path(root, manifest, f"golden/outputs_{i}.npz", f"golden frame {i}")


def read_member(root: Path, manifest: Mapping[str, Any], rel: str, limit: int) -> bytes:
    """The bytes of listed file ``rel``, hashed as they are used: a file swapped after the
    integrity check is still caught."""
    data = read_bounded(_inside(root, rel, "file"), limit, rel)
    if hashlib.sha256(data).hexdigest() != manifest["files"][rel]["sha256"]:
        raise BundleError(f"modified: {rel} (changed while it was being verified)", "verify it again")
    return data


# --- golden data ---------------------------------------------------------------------------------


def _npy(data: bytes, what: str) -> np.ndarray:
    """One .npy member, its header checked before any array is allocated."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy version {version} is not supported")
        shape, _, dtype = readers[version](buf)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise SparsefuseError(f"{what} is not a .npy array ({exc})", DAMAGED) from None
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise SparsefuseError(
            f"{what} holds {dtype} values, not numbers", "golden data is numeric arrays only"
        )
    if math.prod(shape) * dtype.itemsize != len(data) - buf.tell():
        raise SparsefuseError(f"{what} declares shape {list(shape)} but holds other data", DAMAGED)
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _zip_infos(archive: zipfile.ZipFile, what: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_NPZ_MEMBERS or sum(i.file_size for i in infos) > MAX_NPZ_BYTES:
        raise SparsefuseError(
            f"{what} declares more than {MAX_NPZ_BYTES} bytes or {MAX_NPZ_MEMBERS} arrays", DAMAGED
        )
    names = [i.filename for i in infos]
    bad = [n for n in names if not n.endswith(".npy") or "/" in n]
    if bad or len(set(names)) != len(names):
        raise SparsefuseError(f"{what} has member {(bad or names)[0]!r} that is not one .npy array", DAMAGED)
    return infos


def read_npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    """An .npz of numeric arrays, read with every size bounded and no pickle."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            arrays = {}
            for info in _zip_infos(archive, what):
                with archive.open(info) as member:
                    data = member.read(info.file_size + 1)  # bounded: a size lie is seen, not obeyed
                if len(data) != info.file_size:
                    raise SparsefuseError(f"{what}: {info.filename} is not the size it declares", DAMAGED)
                arrays[info.filename.removesuffix(".npy")] = _npy(data, f"{what}: {info.filename}")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: encrypted members; NotImplementedError: unknown compression
        raise SparsefuseError(f"{what} is not a readable .npz ({exc})", DAMAGED) from None
    if not arrays:
        raise SparsefuseError(f"{what} holds no arrays", DAMAGED)
    return arrays


def _tolerance(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and set(entry) == {"rtol_of_max", "atol", "exact"}
        and all(
            isinstance(entry[k], (int, float)) and not isinstance(entry[k], bool) and entry[k] >= 0
            for k in ("rtol_of_max", "atol")
        )
        and isinstance(entry["exact"], bool)
    )


def read_tolerances(data: bytes) -> dict[str, dict[str, Any]]:
    """golden/tolerances.json's fp32 table {output: {rtol_of_max, atol, exact}}, checked."""
    what = "golden/tolerances.json"
    doc = strict_json(data, what)
    table = doc.get("fp32") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not all(_tolerance(v) for v in table.values()):
        raise SparsefuseError(f"{what} has no fp32 table of {{rtol_of_max >= 0, atol >= 0, exact}}", DAMAGED)
    return table


def check_feeds(feeds: Mapping[str, np.ndarray], inputs: list[Any], what: str) -> None:
    """Golden inputs fit the model: the same names, element types, ranks and fixed sizes.
    ``inputs`` are onnxruntime NodeArg (name, type 'tensor(float)', shape with str/None dims)."""
    want = {i.name: i for i in inputs}
    if set(feeds) != set(want):
        raise BundleError(
            f"{what} holds inputs {sorted(feeds)}, the model takes {sorted(want)}",
            "the golden data does not fit the model",
        )
    for name, arg in want.items():
        array, shape = feeds[name], list(arg.shape)
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is not None and array.dtype != dtype:
            raise BundleError(
                f"{what} input {name!r} is {array.dtype}, the model takes {arg.type}",
                "the golden data does not fit the model",
            )
        fixed = [(d, n) for d, n in zip(shape, array.shape, strict=False) if isinstance(d, int)]
        if array.ndim != len(shape) or any(d != n for d, n in fixed):
            raise BundleError(
                f"{what} input {name!r} has shape {list(array.shape)}, the model takes {shape}",
                "the golden data does not fit the model",
            )


def check_golden_outputs(golden: Mapping[str, np.ndarray], names: list[str], what: str) -> None:
    """The golden outputs are exactly the model's outputs: none missing (it would go unchecked)."""
    if set(golden) != set(names):
        raise BundleError(
            f"{what} holds outputs {sorted(golden)}, the model produces {sorted(names)}",
            "the golden data does not fit the model",
        )


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


# --- models --------------------------------------------------------------------------------------


def load_model(root: Path, manifest: Mapping[str, Any], rel: str) -> Any:
    """The bundle's ONNX model from its bytes (never by path, so nothing else is opened); models
    that keep tensors in external files are refused: bundles carry self-contained models."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import (
        _get_all_tensors,
        _get_attribute_tensors_from_graph,
        uses_external_data,
    )

    data = read_member(root, manifest, rel, MAX_MODEL_BYTES)
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise SparsefuseError(f"{rel} is not an ONNX model ({exc})", DAMAGED) from None
    tensors = [
        *_get_all_tensors(model),
        *(t for f in model.functions for t in _get_attribute_tensors_from_graph(f)),
    ]
    external = next((t for t in tensors if uses_external_data(t)), None)
    if external is not None:
        where = next((e.value for e in external.external_data if e.key == "location"), "?")
        raise BundleError(
            f"{rel} keeps tensor {external.name!r} in an external file {where!r}",
            "bundles carry self-contained models; rebuild it with `sparsefuse handoff`",
        )
    return model
