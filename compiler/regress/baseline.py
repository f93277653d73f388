"""Stored latency baselines, keyed by what makes two measurements comparable.

A baseline file holds one entry per key: model hash (of the source model, so a recompile with a
changed compiler stays comparable), target tag, backend and its version, precision and input
sizes. Comparing a profile with an entry of another key is refused, naming the fields that
differ: a latency measured on TensorRT 10.3 says nothing about one on 8.6.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsefuse.atomic import write_json
from sparsefuse.compiler.regress.samples import LatencySamples, read_json, samples_from_json
from sparsefuse.errors import SparsefuseError

BASELINE_SCHEMA_VERSION = 1
KEY_FIELDS = ("model_hash", "target", "backend", "backend_version", "precision", "input_shapes")


@dataclass(frozen=True)
class BaselineKey:
    model_hash: str
    target: str
    backend: str
    backend_version: str
    precision: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (input name, shape), sorted by name

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shapes"] = {name: list(shape) for name, shape in self.input_shapes}
        return out

    def key_id(self) -> str:
        """Stable 16-hex-digit id of the key (the entry name in the baseline file)."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        shapes = ", ".join(f"{n}{list(s)}" for n, s in self.input_shapes)
        return (
            f"model {self.model_hash[:12]}, target {self.target}, {self.backend} {self.backend_version}, "
            f"{self.precision}, inputs {shapes}"
        )


def key_from_json(doc: dict[str, Any], where: str) -> BaselineKey:
    missing = [f for f in KEY_FIELDS if f not in doc]
    if missing:
        raise SparsefuseError(
            f"{where}: key lacks {', '.join(missing)}", f"a key has the fields {KEY_FIELDS}"
        )
    shapes = doc["input_shapes"]
    if not isinstance(shapes, dict):
        raise SparsefuseError(f"{where}: input_shapes must map input name to shape", "regenerate the file")
    return BaselineKey(
        model_hash=str(doc["model_hash"]),
        target=str(doc["target"]),
        backend=str(doc["backend"]),
        backend_version=str(doc["backend_version"]),
        precision=str(doc["precision"]),
        input_shapes=tuple(sorted((str(n), tuple(int(d) for d in s)) for n, s in shapes.items())),
    )


def key_mismatch(a: BaselineKey, b: BaselineKey) -> list[str]:
    """Human-readable differences ``field: a != b``; empty when the keys match."""
    ja, jb = a.to_json(), b.to_json()
    return [f"{f}: {ja[f]!r} != {jb[f]!r}" for f in KEY_FIELDS if ja[f] != jb[f]]


@dataclass(frozen=True)
class BaselineEntry:
    key: BaselineKey
    samples: LatencySamples
    updated_utc: str


def load_entries(path: str | Path) -> list[BaselineEntry]:
    doc = read_json(path, "baseline")
    if doc.get("schema_version") != BASELINE_SCHEMA_VERSION or not isinstance(doc.get("entries"), dict):
        raise SparsefuseError(
            f"baseline {path} is not a sparsefuse baseline (schema_version {BASELINE_SCHEMA_VERSION})",
            "create one with `sparsefuse regress ... --update-baseline`",
        )
    entries = []
    for key_id, entry in sorted(doc["entries"].items()):
        where = f"baseline {path} entry {key_id}"
        entries.append(
            BaselineEntry(
                key=key_from_json(entry.get("key", {}), where),
                samples=samples_from_json(entry.get("profile", {}), where),
                updated_utc=str(entry.get("updated_utc", "")),
            )
        )
    return entries


def select_entry(entries: list[BaselineEntry], key: BaselineKey, path: str | Path) -> BaselineEntry:
    """The entry with exactly ``key``; otherwise a clear error naming the mismatched fields."""
    for entry in entries:
        if entry.key == key:
            return entry
    if not entries:
        raise SparsefuseError(f"baseline {path} has no entries", "record one with --update-baseline")
    nearest = min(entries, key=lambda e: len(key_mismatch(e.key, key)))
    diffs = "; ".join(key_mismatch(nearest.key, key))
    raise SparsefuseError(
        f"baseline {path} has no entry for this measurement (baseline vs candidate: {diffs})",
        "compare like with like, or record a baseline for this key with --update-baseline",
    )


def update_baseline(path: str | Path, key: BaselineKey, samples: LatencySamples) -> Path:
    """Insert or replace the entry for ``key``; other keys' entries are kept. Atomic write."""
    path = Path(path)
    doc: dict[str, Any] = {"schema_version": BASELINE_SCHEMA_VERSION, "entries": {}}
    if path.exists():
        load_entries(path)  # refuse to overwrite a file that is not a baseline
        doc = read_json(path, "baseline")
    doc["entries"][key.key_id()] = {
        "key": key.to_json(),
        "profile": samples.to_json(),
        "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_json(path, doc)
