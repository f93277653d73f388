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
import math
import os
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
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
MAX_JSON_BYTES = 16 << 20  # manifest.json, tolerances.json: kilobytes in practice
MAX_SIGNATURE_BYTES = 1024  # an ed25519 signature is 64 bytes
MAX_MEMBERS = 100_000
DAMAGED = "the bundle is damaged or was not made by `sparsefuse handoff`; fetch or rebuild it"


class BundleError(SparsefuseError):
    """The bundle is readable but fails a check (tampered, unsafe, unsigned): verify exits 1.
    A plain SparsefuseError means it cannot be read as a bundle at all (verify exits 2)."""


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


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file (not a link) of at most ``limit`` bytes, size checked before reading."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise SparsefuseError(f"{what} is missing", DAMAGED) from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{what} is not a regular file", "bundles hold regular files only")
    if info.st_size > limit:
        raise SparsefuseError(f"{what} is {info.st_size} bytes, more than the {limit} allowed", DAMAGED)
    data = path.read_bytes()
    if len(data) > limit:  # grew since the stat
        raise SparsefuseError(f"{what} is more than {limit} bytes", DAMAGED)
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without passing parse_constant
        raise ValueError(f"number {text} overflows")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # two parsers could pick different values: ambiguous, so refused
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def strict_json(data: bytes, what: str) -> Any:
    """Parse UTF-8 JSON strictly: no NaN/Infinity (literal or overflowing), no duplicate keys."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SparsefuseError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})", DAMAGED) from None
    try:
        return json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise SparsefuseError(f"{what} is not valid JSON: {exc}", DAMAGED) from None


def _file_entry_problem(rel: Any, entry: Any) -> str:
    if not isinstance(rel, str):
        return "a file name is not a string"
    if not isinstance(entry, dict) or set(entry) != {"sha256", "bytes"}:
        return f"entry {rel!r} is not {{sha256, bytes}}"
    digest, size = entry["sha256"], entry["bytes"]
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        return f"entry {rel!r} has no hex SHA-256"
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= 1 << 40:
        return f"entry {rel!r} has a size that is not a whole number of bytes under 1 TiB"
    return ""


def read_manifest(root: Path) -> dict[str, Any]:
    """manifest.json, strictly parsed, with its schema version and a well-formed file table."""
    if not (root / MANIFEST).exists():
        raise SparsefuseError(f"{root} has no {MANIFEST}", "is it a bundle? `sparsefuse handoff` makes them")
    manifest = strict_json(read_bounded(root / MANIFEST, MAX_JSON_BYTES, MANIFEST), MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise SparsefuseError(f"{MANIFEST} has no file table", DAMAGED)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise SparsefuseError(
            f"{MANIFEST} schema_version {version!r} is not supported",
            f"this sparsefuse reads schema_version {SCHEMA_VERSION}; upgrade it or rebuild the bundle",
        )
    files = manifest["files"]
    if len(files) > MAX_MEMBERS:
        raise SparsefuseError(f"{MANIFEST} lists {len(files)} files, more than {MAX_MEMBERS}", DAMAGED)
    for rel, entry in files.items():
        problem = _file_entry_problem(rel, entry)
        if problem:
            raise SparsefuseError(f"{MANIFEST} file table: {problem}", DAMAGED)
    return manifest


def integrity_problems(root: Path, manifest: Mapping[str, Any]) -> list[str]:
    """``modified: x``, ``missing: y``, ``extra: z`` for every file that disagrees with the manifest."""
    listed: dict[str, Any] = manifest["files"]
    present = [rel for rel in list_files(root) if rel not in CONTROL_FILES]
    problems = []
    for rel in sorted(listed):
        unsafe = unsafe_name(rel) or ("control file" if rel in CONTROL_FILES else "")
        if unsafe:
            problems.append(f"unsafe path in manifest: {rel} ({unsafe})")
        elif not (root / rel).is_file():
            problems.append(f"missing: {rel}")
        elif (size := (root / rel).stat().st_size) != listed[rel].get("bytes"):  # cheap; bounds hashing
            problems.append(f"modified: {rel} ({size} bytes, listed as {listed[rel].get('bytes')})")
        elif sha256_file(root / rel) != listed[rel].get("sha256"):
            problems.append(f"modified: {rel}")
    problems += [f"extra: {rel}" for rel in present if rel not in listed]
    return problems


def check_integrity(root: Path, manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest (read here unless given), once every file matches it; else BundleError naming
    the files."""
    manifest = dict(read_manifest(root) if manifest is None else manifest)
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
    signature = read_bounded(sig_path, MAX_SIGNATURE_BYTES, SIGNATURE)
    manifest = read_bounded(root / MANIFEST, MAX_JSON_BYTES, MANIFEST)
    try:
        key.verify(signature, manifest)
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


def unsafe_name(name: str) -> str:
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


_HEADER_ALLOWANCE = 64 << 20  # tar headers and padding on top of the members' data
_CHUNK = 1 << 20


class _BoundedStream:
    """A read-only stream that refuses to read or seek past ``limit`` bytes: a gzip bomb or a
    member declaring a huge size is refused before it is decompressed."""

    def __init__(self, raw: Any, limit: int, archive: Path) -> None:
        self.raw, self.limit, self.archive = raw, limit, archive

    def _refuse(self) -> None:
        raise BundleError(
            f"{self.archive} expands past {self.limit} bytes", "the archive is not a bundle (size limit)"
        )

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self.raw.tell()
        want = room + 1 if size is None or size < 0 else size
        data = self.raw.read(min(want, room + 1))  # one byte past the limit tells a bomb apart
        if len(data) > room:
            self._refuse()
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.raw.tell() + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target > self.limit:
            self._refuse()
        return self.raw.seek(target)

    def tell(self) -> int:
        return self.raw.tell()


def _check_member(m: tarfile.TarInfo, seen: set[str]) -> str:
    """The member's canonical name, or BundleError when it may not be extracted."""
    name = m.name.removeprefix("./")
    unsafe = unsafe_name(name)
    if unsafe:
        raise BundleError(f"refusing to extract {m.name!r}: {unsafe}", "the archive is not a safe bundle")
    if m.issym() or m.islnk():
        raise BundleError(
            f"refusing to extract {m.name!r}: link to {m.linkname!r}", "bundles hold regular files only"
        )
    if not (m.isfile() or m.isdir()):
        raise BundleError(f"refusing to extract {m.name!r}: not a regular file", "bundles hold files only")
    if name in seen:
        raise BundleError(f"refusing to extract {m.name!r}: duplicate entry", "the archive is ambiguous")
    seen.add(name)
    return name


def _read_members(tar: tarfile.TarFile, stream: _BoundedStream, archive: Path, max_bytes: int) -> list:
    """Every member header, checked one by one before the next is read (a declared size is
    refused before the reader seeks past it); then the end of the stream, which must be zeros."""
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    while (m := tar.next()) is not None:
        _check_member(m, seen)
        total += m.size
        if total > max_bytes or len(members) >= MAX_MEMBERS:
            raise BundleError(
                f"{archive} declares more than {max_bytes} bytes or {MAX_MEMBERS} members",
                "the archive is not a bundle (size limit)",
            )
        members.append(m)
    # tarfile stops quietly at a damaged header: what follows the end blocks must be padding only,
    # and reading it to the end checks the gzip trailer (CRC, length) of a truncated archive.
    while chunk := stream.read(_CHUNK):
        if chunk.count(0) != len(chunk):
            raise SparsefuseError(f"{archive} has data after its end of archive or a damaged header", DAMAGED)
    return members


def _open_stream(handle: Any, archive: Path, max_bytes: int) -> _BoundedStream:
    magic = handle.read(2)
    handle.seek(0)
    raw = gzip.GzipFile(fileobj=handle, mode="rb") if magic == b"\x1f\x8b" else handle
    return _BoundedStream(raw, max_bytes + _HEADER_ALLOWANCE, archive)


def safe_extract(archive: Path, dest: Path, max_bytes: int = 8 << 30) -> Path:
    """Extract a bundle tar(.gz) into ``dest`` (created, must be empty), refusing anything unsafe:
    absolute paths, ``..``, links (symbolic or hard), devices, FIFOs, duplicates, and archives
    that declare or expand past ``max_bytes`` (what is decompressed is bounded too). Nothing is
    written until every member has been checked. Damaged archives (truncated, not a tar) raise
    SparsefuseError; unsafe ones BundleError."""
    try:
        with open(archive, "rb") as handle:
            stream = _open_stream(handle, archive, max_bytes)
            with tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[call-overload]
                members = _read_members(tar, stream, archive, max_bytes)
                _check_layout(members)
                _prepare_dest(dest)
                _write_members(tar, members, dest.resolve())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, OSError) and exc.filename is not None and Path(exc.filename) != archive:
            raise  # a problem writing the destination, not a damaged archive
        raise SparsefuseError(
            f"cannot read {archive} as a bundle archive: {exc or type(exc).__name__}",
            "the archive is truncated or not a tar.gz; fetch it again",
        ) from None
    return dest


def _check_layout(members: list[tarfile.TarInfo]) -> None:
    files = {m.name.removeprefix("./") for m in members if m.isfile()}
    parents = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    clash = sorted(files & parents)
    if clash:
        raise BundleError(
            f"refusing to extract {clash[0]!r}: both a file and a folder", "the archive is ambiguous"
        )


def _prepare_dest(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise SparsefuseError(f"extraction folder {dest} is not empty", "extract into a new folder")


def _write_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path) -> None:
    for m in members:
        if not m.isfile():
            continue
        target = (root / m.name.removeprefix("./")).resolve()
        if root not in target.parents:  # belt and braces after the name checks
            raise BundleError(f"refusing to extract {m.name!r}: escapes {root}", "the archive is unsafe")
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(m)
        assert source is not None  # a regular file always has data
        with open(target, "xb") as handle:
            shutil.copyfileobj(source, handle, _CHUNK)  # chunks: memory stays bounded
            if handle.tell() != m.size:
                raise SparsefuseError(f"{m.name} is truncated in the archive", DAMAGED)
        os.chmod(
            target,
            stat.S_IRUSR
            | stat.S_IWUSR
            | stat.S_IRGRP
            | stat.S_IROTH
            | ((stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) if m.mode & 0o100 else 0),
        )
