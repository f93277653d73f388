"""Files the CLI takes from the user (ONNX models, input npz files), checked once where they enter.

Every problem is a SparsefuseError naming the flag and the file; nothing is unpickled (npz files
are opened with ``allow_pickle=False``) and no backend sees a file these checks refused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sparsefuse.errors import SparsefuseError


def check_onnx_file(path: str | Path, flag: str = "--onnx"):  # -> onnx.ModelProto
    """The parsed model (external data not loaded); refuses a missing file, a folder, and bytes
    that are not an ONNX model with a graph (empty, truncated, random)."""
    import onnx

    path = Path(path)
    if path.is_dir():
        raise SparsefuseError(f"{flag} {path} is a directory", "pass an .onnx file")
    if not path.is_file():
        raise SparsefuseError(f"ONNX model not found: {path} ({flag})",
                              "run `sparsefuse compile` first, or pass an existing .onnx file")
    hint = "pass an ONNX model written by sparsefuse compile (OUT/lowered/<target>.onnx)"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeWarning, ...
        raise SparsefuseError(f"{flag} {path} is not an ONNX model ({_first_line(exc)})", hint) from None
    if not model.graph.node or not model.graph.output:
        raise SparsefuseError(f"{flag} {path} is not an ONNX model (no graph)", hint)
    return model


def load_npz(path: str | Path, flag: str = "--inputs") -> dict[str, np.ndarray]:
    """The arrays of an npz file of plain numeric arrays (object arrays refused, never unpickled)."""
    path = Path(path)
    if path.is_dir():
        raise SparsefuseError(f"{flag} {path} is a directory", "pass an .npz file (numpy.savez)")
    if not path.is_file():
        raise SparsefuseError(f"{flag} {path} does not exist", "pass an .npz file (numpy.savez)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("a single .npy array, not an npz archive")
        with data:
            arrays = {name: np.ascontiguousarray(data[name]) for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SparsefuseError(f"{flag} {path} is not an npz of numeric arrays ({_first_line(exc)})",
                              "write it with numpy.savez(path, **{input name: array})") from None
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise SparsefuseError(f"{flag} {path}: array {name!r} has dtype {array.dtype}, not a number type",
                                  "give plain numeric arrays")
    return arrays


def check_feeds(model, frames: Sequence[Mapping[str, np.ndarray]], where: str) -> None:
    """Every graph input is in every frame with the graph's dtype, rank and static dimensions."""
    from onnx import helper

    initializers = {i.name for i in model.graph.initializer}
    hint = "give one array per model input with the model's dtype and shape (see the ONNX graph inputs)"
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = None
        for frame in frames:
            if value.name not in frame:
                raise SparsefuseError(f"{where} lack the model input {value.name!r} "
                                      f"(they have {', '.join(sorted(frame)) or 'nothing'})", hint)
            array = np.asarray(frame[value.name])
            if dtype is not None and array.dtype != dtype:
                raise SparsefuseError(
                    f"{where}: input {value.name!r} is {array.dtype}, the model takes {dtype}", hint)
            if array.ndim != len(dims) or any(
                    d is not None and d != s for d, s in zip(dims, array.shape, strict=True)):
                shown = "x".join("?" if d is None else str(d) for d in dims)
                raise SparsefuseError(f"{where}: input {value.name!r} has shape {list(array.shape)}, "
                                      f"the model takes [{shown}]", hint)


def check_out_path(path: str | Path, flag: str = "--out", *, is_dir: bool) -> None:
    """Before any expensive work: ``path`` can become the output folder (``is_dir``) or file. Nothing
    is created here; the nearest existing ancestor must be a writable folder."""
    import os

    path = Path(path)
    if path.exists() and path.is_dir() != is_dir:
        raise SparsefuseError(f"{flag} {path} exists and is {'not ' if is_dir else ''}a directory",
                              f"give {flag} a {'folder' if is_dir else 'file'} path")
    ancestor = path.parent if not path.exists() else path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SparsefuseError(f"cannot write {flag} {path}: {ancestor} is not a writable folder",
                              f"choose a {flag} path you can write to")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
