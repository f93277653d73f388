"""Stage running with caching and progress reporting.

A stage is a function that writes its outputs (paths relative to OUT) atomically and returns a
small JSON-able ``details`` dict. Its cache key is hash(input hashes + config + tool versions)
(compiler/provenance.py). After a stage completes, its record (key, output hashes, details) is
saved in OUT/.cache/<stage>.json; on recompile a stage whose key is unchanged and whose
outputs are intact is skipped. Cache records are bookkeeping, not artifacts: a record whose
outputs were changed or deleted is simply ignored. A stage interrupted or failing midway leaves
none of its outputs behind: it deletes the files it created and those its saved record lists, and
nothing else (a user's own files in OUT stay). No path outside OUT is ever written or deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sparsefuse.atomic import signals_deferred, write_json
from sparsefuse.compiler.provenance import hash_outputs, outputs_intact, stage_key
from sparsefuse.errors import SparsefuseError

CACHE_DIR = ".cache"


@dataclass(frozen=True)
class StageRecord:
    """What a stage did: cache key, output hashes {relpath: sha256}, wall time (s), details."""

    name: str
    key: str
    outputs: dict[str, str]
    wall_s: float
    cached: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "outputs": self.outputs, "wall_s": round(self.wall_s, 3),
                "cached": self.cached, "details": self.details}


class Progress(Protocol):
    """What the pipeline tells its display."""

    def stage_started(self, name: str) -> None: ...
    def stage_finished(self, record: StageRecord) -> None: ...
    def log(self, message: str) -> None: ...


class NullProgress:
    def stage_started(self, name: str) -> None:
        pass

    def stage_finished(self, record: StageRecord) -> None:
        pass

    def log(self, message: str) -> None:
        pass


StageFn = Callable[[], Mapping[str, Any] | None]


@dataclass
class StageRunner:
    """Runs stages in OUT, skipping those whose cached record still holds."""

    out: Path
    versions: Mapping[str, str]
    progress: Progress = field(default_factory=NullProgress)
    records: list[StageRecord] = field(default_factory=list)

    def run(self, name: str, inputs: Mapping[str, str], config: Mapping[str, Any],
            outputs: Sequence[str], fn: StageFn) -> StageRecord:
        """Run stage ``name`` unless cached. ``inputs``: {label: sha256}; ``outputs``: relpaths."""
        for rel in [*outputs, f"{CACHE_DIR}/{name}.json"]:  # cheap, before any work: writes stay in OUT
            inside_out(self.out, rel)
        key = stage_key(name, inputs, config, self.versions)
        self.progress.stage_started(name)
        start = time.perf_counter()
        record = self._cached(name, key, outputs, start)
        if record is None:
            before = present_paths(self.out, outputs)
            try:
                details = dict(fn() or {})
                wall_s = time.perf_counter() - start
                # Until its record is saved the stage is not done: Ctrl-C / SIGTERM while hashing
                # must not leave outputs that no record vouches for.
                record = StageRecord(name, key, hash_outputs(self.out, outputs), wall_s, False, details)
                write_json(self._cache_path(name), {"schema_version": 1, "name": name, **record.to_dict()})
            except BaseException:
                # Ctrl-C or a failure mid-stage: what this stage already wrote (complete files, but
                # an incomplete set) and its stale outputs from an earlier compile both go; nothing
                # else does (a user's own files in OUT stay). A second Ctrl-C waits for the cleanup.
                with signals_deferred():
                    self._discard(name, outputs, before)
                raise
        self.records.append(record)
        self.progress.stage_finished(record)
        return record

    def _cache_path(self, name: str) -> Path:
        return self.out / CACHE_DIR / f"{name}.json"

    def _recorded(self, name: str) -> list[str]:
        """The output files the stage's saved record lists (none when there is no readable record)."""
        try:
            saved = json.loads(self._cache_path(name).read_text())
        except (OSError, ValueError):
            return []
        hashes = saved.get("outputs") if isinstance(saved, dict) else None
        return [rel for rel in hashes if isinstance(rel, str)] if isinstance(hashes, dict) else []

    def _discard(self, name: str, outputs: Sequence[str], before: set[str]) -> None:
        """Delete what a failed stage wrote: files it created now, and the files under its declared
        outputs that its saved record lists. Never raises: the stage's own error is the one to see."""
        recorded = [rel for rel in self._recorded(name) if _under(rel, outputs)]
        now = present_paths(self.out, outputs)
        created = sorted(now - before)
        doomed = [rel for rel in (*recorded, *created) if rel in now]
        for rel in [*doomed, f"{CACHE_DIR}/{name}.json"]:
            with contextlib.suppress(SparsefuseError):  # a refused path is skipped, the rest still go
                remove_outputs(self.out, [rel])
        # Folders this run or an earlier compile made for the outputs, once empty; a folder that was
        # there before and holds nothing we recorded is not ours to remove.
        ours = {parent for rel in (*recorded, *created) for parent in _parents(rel)} & now
        for rel in sorted((now - before) | ours, key=lambda r: r.count("/"), reverse=True):
            path = self.out / rel
            if _under(rel, outputs) and path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()  # only an empty folder goes

    def _cached(self, name: str, key: str, outputs: Sequence[str], start: float) -> StageRecord | None:
        """The saved record when it still holds; its wall_s is this check's time (s)."""
        try:
            saved = json.loads(self._cache_path(name).read_text())
        except (OSError, ValueError):
            return None
        hashes = saved.get("outputs", {})
        covers = all(any(_under(rel, [o]) for rel in hashes) for o in outputs)
        if saved.get("key") != key or not covers or not outputs_intact(self.out, hashes):
            return None
        return StageRecord(name, key, hashes, time.perf_counter() - start, True, saved.get("details", {}))


def inside_out(out: Path, rel: str) -> Path:
    """``out / rel`` with symlinks resolved, when that lies strictly inside OUT (OUT itself does not);
    otherwise SparsefuseError: nothing outside OUT is ever written or deleted."""
    root = out.resolve()
    path = (out / rel).resolve()
    if path == root or root not in path.parents:
        raise SparsefuseError(
            f"refusing to touch {rel!r}: it resolves to {path}, which is not inside {root}",
            "artifact paths stay inside --out; remove symlinks in --out that point elsewhere",
        )
    return path


def present_paths(out: Path, relpaths: Sequence[str]) -> set[str]:
    """OUT-relative paths (files, links and folders) that exist at or under ``relpaths``."""
    found: set[str] = set()
    for rel in relpaths:
        path = out / rel
        if path.is_symlink() or path.exists():
            found.add(Path(rel).as_posix())
        if path.is_dir() and not path.is_symlink():
            found.update(p.relative_to(out).as_posix() for p in path.rglob("*"))
    return found


def remove_outputs(out: Path, relpaths: Sequence[str]) -> None:
    """Delete the files (or links) ``relpaths`` under ``out``; missing ones and folders are skipped.
    Every path is checked first (:func:`inside_out`), so a refused one deletes nothing."""
    checked = [(rel, inside_out(out, rel)) for rel in relpaths]
    for rel, resolved in checked:
        path = out / rel
        # A link inside OUT goes itself (its target may be anything); else the resolved file.
        victim = path if path.is_symlink() else resolved
        if victim.is_symlink() or victim.is_file():
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()


def _under(rel: str, outputs: Sequence[str]) -> bool:
    """True when ``rel`` is one of ``outputs`` or lies under one of them."""
    return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outputs)


def _parents(rel: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest``; it replaces ``dest`` only on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the artifact directory is shared
    try:
        yield tmp
        if dest.exists():
            # Two renames keep the window without a complete directory to a rename, not a copy.
            old = dest.with_name(f".{dest.name}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        with signals_deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
