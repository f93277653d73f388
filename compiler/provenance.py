"""Provenance: tool versions, content hashes and stage cache keys (docs/design.md §3).

A stage's cache key is the SHA-256 of its input hashes + the config + the tool versions. The
sparsefuse "version" includes a digest of our own Python sources, so editing the model or a pass
invalidates the cache instead of silently reusing stale artifacts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from sparsefuse.atomic import sha256_bytes, sha256_file

_TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "polygraphy", "numpy")
_SOURCE_SUFFIXES = (".py", ".json", ".toml")
_SOURCE_PACKAGES = ("sparsefuse", "sparsefuse.compiler", "sparsefuse.passes", "sparsefuse.plugins",
                    "sparsefuse.models", "sparsefuse.targets")


@functools.cache
def tool_versions() -> dict[str, str]:
    """Versions of everything that changes the artifacts; python and sparsefuse included."""
    from sparsefuse import __version__

    versions = {name: _dist_version(name) for name in _TOOLS}
    versions["python"] = platform.python_version()
    versions["sparsefuse"] = __version__
    versions["sparsefuse_source"] = source_digest()
    return versions


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def source_digest() -> str:
    """SHA-256 over our sources and data (path + content): Python, built-in rigs (JSON) and
    target records (TOML)."""
    digest = hashlib.sha256()
    for root in _package_roots():
        files = (p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file())
        for path in sorted(files):
            if "tests" in path.parts or "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _package_roots() -> list[Path]:
    roots = []
    for name in _SOURCE_PACKAGES:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        roots.extend(Path(p) for p in getattr(module, "__path__", []))
    return sorted(set(roots))


def stage_key(stage: str, inputs: Mapping[str, str], config: Mapping[str, Any],
              versions: Mapping[str, str]) -> str:
    """Cache key of a stage: hash of its name, input hashes, config and tool versions."""
    blob = json.dumps({"stage": stage, "inputs": dict(inputs), "config": dict(config),
                       "versions": dict(versions)}, sort_keys=True, default=str)
    return sha256_bytes(blob.encode())


def hash_outputs(out_dir: Path, relpaths: Iterable[str]) -> dict[str, str]:
    """{relpath: sha256} for files and every file under directories, relative to out_dir."""
    hashes: dict[str, str] = {}
    for rel in relpaths:
        path = out_dir / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            hashes[file.relative_to(out_dir).as_posix()] = sha256_file(file)
    return hashes


def outputs_intact(out_dir: Path, hashes: Mapping[str, str]) -> bool:
    """True when every recorded output file still exists with its recorded hash."""
    for rel, digest in hashes.items():
        path = out_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return bool(hashes)
