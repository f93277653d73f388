"""Atomic artifact writes and content hashing.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so an interrupted compile never leaves a half-written file that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparsefuse.errors import SparsefuseError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise SparsefuseError(
            f"cannot write to {dest.parent}: {exc.strerror or exc}",
            "choose an output directory you can write to (--out)",
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    shared = 0o666 & ~_umask()  # mkstemp creates 0600; artifacts and checkpoints are shared files
    os.chmod(tmp, shared)
    try:
        yield tmp
        # Some writers (safetensors) recreate the file with mkstemp's 0600: share it again. A mode
        # the caller set on purpose (0755 for scripts) is kept.
        if tmp.stat().st_mode & 0o777 == 0o600:
            os.chmod(tmp, shared)
        os.replace(tmp, dest)
    except BaseException:
        with signals_deferred(), contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so that a second Ctrl-C during a cleanup
    cannot stop it halfway (the signal is delivered, and raises, right after). A no-op off the main
    thread.

    The Python-level handlers are swapped for recorders rather than masking the signals: in a
    process with other threads (torch, ONNX Runtime pools) the kernel hands a process signal to any
    thread that does not block it, and Python then runs the handler in the main thread anyway."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    swapped = [sig for sig, handler in previous.items() if handler is not None]
    for sig in swapped:
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for sig in swapped:
            signal.signal(sig, previous[sig])
        for sig in pending:  # delivered now, to the handlers that were in place
            signal.raise_signal(sig)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON with sorted keys and a trailing newline (stable bytes for stable hashes).

    JSON has no literal for NaN or infinity (strict readers reject ``NaN``), so an artifact never
    carries one: each is written as null and, in an object document, listed under ``"non_finite"``
    ({key path: "nan" | "inf" | "-inf"}) so that a reader knows why the number is missing. A
    document that is not an object cannot say so and is refused (SparsefuseError naming the path)."""
    found: dict[str, str] = {}
    clean = _finite_only(obj, "", found)
    if found:
        if not isinstance(clean, dict):
            raise SparsefuseError(
                f"{Path(dest).name} would contain a non-finite number at {next(iter(found))}",
                "a NaN or infinity came from an input or a measurement (nothing was written)")
        clean = {**clean, "non_finite": found}
    text = json.dumps(clean, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    return write_text(dest, text + "\n")


def _finite_only(obj: Any, where: str, found: dict[str, str]) -> Any:
    """``obj`` with NaN / infinities replaced by None; their key paths (``a.b[2]``) go in ``found``."""
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        obj = obj.tolist()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        found[where or "the top level"] = "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, dict):
        return {key: _finite_only(value, f"{where}.{key}" if where else str(key), found)
                for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_only(value, f"{where}[{i}]", found) for i, value in enumerate(obj)]
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
