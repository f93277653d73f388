"""Hand-off bundle format: manifest, deterministic tar.gz, ed25519 signature, safe extraction.

A bundle is a directory whose every file is listed in manifest.json with its SHA-256 and size;
manifest.sig (optional) is an ed25519 signature over manifest.json's exact bytes. The tar.gz is
deterministic: sorted entries, mtime 0, uid/gid 0, fixed modes, gzip header mtime 0. The only
field that may differ between two builds from identical inputs is manifest.created_utc (fixed by
SOURCE_DATE_EPOCH, as in reproducible-builds practice).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.atomic import sha256_file, write_bytes
from sparsefuse.errors import SparsefuseError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
CONTROL_FILES = (MANIFEST, SIGNATURE)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class BundleError(SparsefuseError):
    """The bundle itself is bad (tampered, unsafe, unsigned): verification fails (exit 1)."""


# --- deterministic content -------------------------------------------------------------------


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """np.savez-compatible bytes with fixed zip timestamps (np.savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def created_utc() -> str:
    """Now, or SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- golden frames as compile's verify stage stores them (polygraphy JSON) ---------------------


def _poly_array(node: Any) -> np.ndarray:
    """A polygraphy-JSON ndarray: {"array": base64 of np.save bytes, ...}."""
    return np.load(io.BytesIO(base64.b64decode(node["array"])), allow_pickle=False)


def read_polygraphy_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """verify/inputs.json (polygraphy's JSON of a list of feed dicts), decoded without importing
    polygraphy (whose JSON module imports torch: seconds per call)."""
    doc = json.loads(path.read_text())
    try:
        return [{name: _poly_array(value) for name, value in feed.items()} for feed in doc]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SparsefuseError(
            f"{path} is not polygraphy feed JSON ({exc})", "recompile so that verify rewrites it"
        ) from None


def read_polygraphy_outputs(path: Path) -> list[dict[str, np.ndarray]]:
    """The first runner's iterations of verify/golden.json (polygraphy RunResults JSON)."""
    doc = json.loads(path.read_text())
    try:
        _, iterations = doc["lst"][0]
        return [
            {name: _poly_array(value["values"]) for name, value in it["outputs"].items()} for it in iterations
        ]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SparsefuseError(
            f"{path} is not polygraphy RunResults JSON ({exc})", "recompile so that verify rewrites it"
        ) from None


# --- manifest ----------------------------------------------------------------------------------


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under root, sorted; symlinks are refused."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise BundleError(f"bundle contains a symbolic link: {rel}", "bundles hold regular files only")
        if path.is_file():
            files.append(rel)
        elif not path.is_dir():
            raise BundleError(f"bundle contains a special file: {rel}", "bundles hold regular files only")
    return files


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in list_files(root)
        if rel not in CONTROL_FILES
    }


def build_manifest(root: Path, fields: Mapping[str, Any]) -> dict[str, Any]:
    """manifest.json content: schema version, ``fields`` (target, versions, ...) and the file table."""
    return {
        "schema_version": SCHEMA_VERSION,
        **fields,
        "created_utc": created_utc(),
        "files": file_table(root),
    }


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root} has no {MANIFEST}", "is this a sparsefuse bundle? (sparsefuse handoff)")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{MANIFEST} is not valid JSON: {exc}", "the bundle is damaged; fetch it again"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{MANIFEST} has no file table", "the bundle is damaged; fetch it again")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{MANIFEST} schema_version {manifest.get('schema_version')!r} is not supported",
            f"this sparsefuse reads schema_version {SCHEMA_VERSION}; upgrade it",
        )
    return manifest


def integrity_problems(root: Path, manifest: Mapping[str, Any]) -> list[str]:
    """``modified: x``, ``missing: y``, ``extra: z`` for every file that disagrees with the manifest."""
    listed: dict[str, Any] = manifest["files"]
    present = [rel for rel in list_files(root) if rel not in CONTROL_FILES]
    problems = []
    for rel in sorted(listed):
        unsafe = _unsafe_name(rel)
        if unsafe:
            problems.append(f"unsafe path in manifest: {rel} ({unsafe})")
        elif not (root / rel).is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(root / rel) != listed[rel].get("sha256"):
            problems.append(f"modified: {rel}")
    problems += [f"extra: {rel}" for rel in present if rel not in listed]
    return problems


def check_integrity(root: Path) -> dict[str, Any]:
    """The manifest, once every file matches it; else BundleError naming the files."""
    manifest = read_manifest(root)
    problems = integrity_problems(root, manifest)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise BundleError(
            f"bundle integrity check failed: {shown}",
            "the bundle was changed after it was made; fetch or rebuild it",
        )
    return manifest


# --- signature -------------------------------------------------------------------------------


def _load_key(path: Path, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SparsefuseError(
            f"cannot read key {path}: {exc.strerror or exc}", "check the key path"
        ) from None
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise SparsefuseError(
            f"{path} is not a PEM {kind} key: {exc}",
            "create one with `openssl genpkey -algorithm ed25519 -out key.pem` "
            "(public: `openssl pkey -in key.pem -pubout -out key.pub`)",
        ) from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SparsefuseError(f"{path} is not an ed25519 key", "bundles are signed with ed25519 keys")
    return key


def sign(manifest_bytes: bytes, private_key: Path) -> bytes:
    return _load_key(private_key, private=True).sign(manifest_bytes)


def check_signature(root: Path, public_key: Path) -> None:
    from cryptography.exceptions import InvalidSignature

    key = _load_key(public_key, private=False)
    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(f"bundle is not signed ({SIGNATURE} is missing)", "ask for a signed bundle")
    try:
        key.verify(sig_path.read_bytes(), (root / MANIFEST).read_bytes())
    except InvalidSignature:
        raise BundleError(
            f"signature check failed: {SIGNATURE} does not match {MANIFEST} under {public_key}",
            "the manifest was altered or signed with another key",
        ) from None


# --- tar.gz ----------------------------------------------------------------------------------


def _tar_info(rel: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.size, info.mode, info.mtime = size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_gz_bytes(root: Path) -> bytes:
    """Deterministic tar.gz of root's files (no top-level folder, sorted, fixed metadata)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in list_files(root):
            data = (root / rel).read_bytes()
            mode = 0o755 if os.access(root / rel, os.X_OK) else 0o644
            tar.addfile(_tar_info(rel, len(data), mode), io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_tar_gz(root: Path, dest: Path) -> Path:
    return write_bytes(dest, tar_gz_bytes(root))


def _unsafe_name(name: str) -> str:
    """Why ``name`` may not be extracted ('' when it is safe). Only canonical relative POSIX
    paths pass: no leading '/', no drive letter, no '..', '.' or empty components."""
    if not name or "\x00" in name or "\\" in name:
        return "empty name, NUL or backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "path traversal"
    if any(part in ("", ".") for part in parts):
        return "non-canonical path"
    return ""


def safe_extract(archive: Path, dest: Path, max_bytes: int = 8 << 30) -> Path:
    """Extract a bundle tar.gz into ``dest`` (created, must be empty), refusing anything unsafe:
    absolute paths, ``..``, links (symbolic or hard), devices, FIFOs, duplicates, and archives
    that expand past ``max_bytes``. Nothing is written until every member has been checked."""
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(
            f"cannot open {archive} as a tar archive: {exc}", "pass a bundle .tar.gz or directory"
        ) from None
    with tar:
        members = tar.getmembers()
        seen: set[str] = set()
        total = 0
        for m in members:
            name = m.name.removeprefix("./")
            unsafe = _unsafe_name(name)
            if unsafe:
                raise BundleError(
                    f"refusing to extract {m.name!r}: {unsafe}", "the archive is not a safe bundle"
                )
            if m.issym() or m.islnk():
                raise BundleError(
                    f"refusing to extract {m.name!r}: link to {m.linkname!r}",
                    "bundles hold regular files only",
                )
            if not (m.isfile() or m.isdir()):
                raise BundleError(
                    f"refusing to extract {m.name!r}: not a regular file", "bundles hold files only"
                )
            if name in seen:
                raise BundleError(
                    f"refusing to extract {m.name!r}: duplicate entry", "the archive is ambiguous"
                )
            seen.add(name)
            total += m.size
            if total > max_bytes:
                raise BundleError(f"{archive} expands past {max_bytes} bytes", "the archive is not a bundle")
        files = {m.name.removeprefix("./") for m in members if m.isfile()}
        parents = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
        clash = sorted(files & parents)
        if clash:
            raise BundleError(
                f"refusing to extract {clash[0]!r}: both a file and a folder", "the archive is ambiguous"
            )
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise SparsefuseError(f"extraction folder {dest} is not empty", "extract into a new folder")
        root = dest.resolve()
        for m in members:
            if not m.isfile():
                continue
            target = (root / m.name.removeprefix("./")).resolve()
            if root not in target.parents:  # belt and braces after the name checks
                raise BundleError(f"refusing to extract {m.name!r}: escapes {dest}", "the archive is unsafe")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(m)
            assert source is not None  # a regular file always has data
            with open(target, "xb") as handle:
                handle.write(source.read())
            os.chmod(
                target,
                stat.S_IRUSR
                | stat.S_IWUSR
                | stat.S_IRGRP
                | stat.S_IROTH
                | ((stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) if m.mode & 0o100 else 0),
            )
    return dest
