"""`sparsefuse verify` on a generated corpus of malformed and hostile bundles.

One real bundle is made per session (a tiny torch model through sparsefuse.compile and handoff);
every case mutates a copy of it: each manifest field x each bad value kind, path escapes,
truncated and lying archives, corrupt golden data, bad signatures. For each case: exit 1 or 2,
one `error: ... (hint: ...)` line on stderr, no uncaught exception, no model from outside the
bundle opened or run (a passing copy is planted next to it), and nothing written anywhere.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
import pytest
from signing_keys import keypair

from sparsefuse.atomic import sha256_file
from sparsefuse.compiler import bundle
from sparsefuse.compiler.cli import main

MISSING = object()
BAD_KINDS: dict[str, Any] = {
    "missing": MISSING,
    "null": None,
    "true": True,
    "zero": 0,
    "negative": -1,
    "float": 1.5,
    "huge": 10**30,
    "empty": "",
    "text": "x",
    "list": ["x"],
    "object": {"x": 1},
}
# (field, kind) pairs that are legitimately valid, so not a malformed case.
VALID = {
    ("target", "text"),
    ("lowered_by", "text"),
    ("lowered_by", "empty"),
    ("compile_config", "object"),
    ("profile_label", "null"),
    ("target_info.sm", "null"),
    ("target_info.tensorrt", "null"),
    ("target_info.tensorrt", "text"),
    ("target_info.tensorrt", "empty"),
    ("target_info.jetpack", "null"),
    ("target_info.jetpack", "text"),
    ("target_info.jetpack", "empty"),
    ("git.commit", "text"),
    ("git.dirty", "null"),
    ("git.dirty", "true"),
}
TOP_FIELDS = (
    "schema_version",
    "files",
    "target",
    "target_info",
    "model",
    "engine_dir",
    "engine_files",
    "golden_frames",
    "created_utc",
    "lowered_by",
    "git",
    "tool_versions",
    "compile_config",
    "profile_label",
)
NESTED_FIELDS = (
    "target_info.backend",
    "target_info.sm",
    "target_info.tensorrt",
    "target_info.jetpack",
    "git.commit",
    "git.dirty",
    "files.lowered/cpu.onnx.sha256",
    "files.lowered/cpu.onnx.bytes",
)
MODEL = "lowered/cpu.onnx"


# --- the real bundle and the planted outside model ---------------------------------------------


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    import torch

    import sparsefuse

    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def forward(self, points):
            return self.net(points).sum(0, keepdim=True)

    out = tmp_path_factory.mktemp("compile") / "out"
    frames = [{"points": torch.rand(n, 4)} for n in (20, 30, 40)]
    sparsefuse.compile(Tiny(), frames, target="cpu", out=out, verify_frames=2)
    return sparsefuse.handoff(out, target="cpu").bundle_dir


@dataclass
class Case:
    """A copy of the bundle at root/bundle and a passing model planted at root/outside."""

    root: Path
    bundle: Path
    outside: Path
    evil_sha: str
    extra_args: list[str] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        import json

        return json.loads((self.bundle / bundle.MANIFEST).read_bytes())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        (self.bundle / bundle.MANIFEST).write_bytes(bundle.json_bytes(manifest))

    def rehash(self, *rels: str) -> None:
        """Rewrite the manifest's hashes of ``rels``: what a forger of an unsigned bundle does."""
        manifest = self.manifest()
        for rel in rels:
            path = self.bundle / rel
            manifest["files"][rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        self.write_manifest(manifest)

    def archive(self, data: bytes | None = None, name: str = "b.tar.gz") -> Path:
        path = self.root / name
        path.write_bytes(bundle.tar_gz_bytes(self.bundle) if data is None else data)
        return path


def make_case(pristine: Path, root: Path) -> Case:
    shutil.copytree(pristine, root / "bundle")
    outside = root / "outside"
    (outside / "lowered").mkdir(parents=True)
    evil = _planted(pristine)
    for path in (outside / "evil.onnx", outside / "lowered" / "cpu.onnx"):
        path.write_bytes(evil)
    (root / "tmp").mkdir()
    return Case(root, root / "bundle", outside, hashlib.sha256(evil).hexdigest())


@functools.cache
def _planted(pristine: Path) -> bytes:
    """The bundle's model with another doc string: the same outputs (it would pass), other bytes."""
    model = onnx.load(str(pristine / MODEL))
    model.doc_string = "planted outside the bundle"
    return model.SerializeToString()


# --- mutations ----------------------------------------------------------------------------------

Mutation = Callable[[Case], Path]


def set_field(dotted: str, value: Any) -> Mutation:
    def mutate(case: Case) -> Path:
        manifest = case.manifest()
        head, *rest = dotted.split(".", 1)
        parent, key = (manifest, head) if not rest else (manifest[head], rest[0])
        if head == "files" and rest:  # files.<rel>.<key>: rel holds a dot
            rel, key = rest[0].rsplit(".", 1)
            parent = manifest["files"][rel]
        if value is MISSING:
            del parent[key]
        else:
            parent[key] = value
        case.write_manifest(manifest)
        return case.bundle

    return mutate


def field_cases() -> Iterator[tuple[str, Mutation]]:
    for name in (*TOP_FIELDS, *NESTED_FIELDS):
        for kind, value in BAD_KINDS.items():
            if (name, kind) not in VALID:
                yield f"field-{name}-{kind}", set_field(name, value)


def escapes(case: Case) -> dict[str, str]:
    return {
        "absolute": str(case.outside / "evil.onnx"),
        "dotdot": "../outside/evil.onnx",
        "inner-dotdot": "lowered/../../outside/evil.onnx",
        "dot": "./lowered/cpu.onnx",
        "double-slash": "lowered//cpu.onnx",
        "backslash": "lowered\\cpu.onnx",
        "nul": "lowered/cpu.onnx\x00",
        "drive": "C:/outside/evil.onnx",
        "trailing-slash": "lowered/cpu.onnx/",
        "control-file": bundle.MANIFEST,
        "unlisted": "lowered/evil.onnx",
    }


def escape(where: str, kind: str, listed: bool) -> Mutation:
    """Point ``where`` (model, engine_files, engine_dir) at an escaping path; ``listed`` also puts
    that path in the file table with the planted model's real hash."""

    def mutate(case: Case) -> Path:
        path = escapes(case)[kind]
        if kind == "unlisted":
            shutil.copyfile(case.outside / "evil.onnx", case.bundle / "lowered" / "evil.onnx")
        manifest = case.manifest()
        if where == "engine_dir":
            manifest["engine_dir"] = path.rsplit("/", 1)[0] if "/" in path else path
            manifest["engine_files"] = [path]
        elif where == "engine_files":
            manifest["engine_files"] = [path]
        else:
            manifest["model"] = path
        if listed:
            manifest["files"][path] = {
                "sha256": case.evil_sha,
                "bytes": (case.outside / "evil.onnx").stat().st_size,
            }
        case.write_manifest(manifest)
        return case.bundle

    return mutate


def symlink_file(case: Case) -> Path:
    (case.bundle / "lowered" / "link.onnx").symlink_to(case.outside / "evil.onnx")
    manifest = case.manifest()
    manifest["model"] = "lowered/link.onnx"
    manifest["files"]["lowered/link.onnx"] = {"sha256": case.evil_sha, "bytes": 1}
    case.write_manifest(manifest)
    return case.bundle


def symlink_dir(case: Case) -> Path:
    shutil.rmtree(case.bundle / "lowered")
    (case.bundle / "lowered").symlink_to(case.outside / "lowered")
    return case.bundle


def symlink_manifest(case: Case) -> Path:
    (case.outside / "manifest.json").write_bytes((case.bundle / bundle.MANIFEST).read_bytes())
    (case.bundle / bundle.MANIFEST).unlink()
    (case.bundle / bundle.MANIFEST).symlink_to(case.outside / "manifest.json")
    return case.bundle


def listed_outside_only(case: Case) -> Path:
    manifest = case.manifest()
    manifest["files"]["../outside/evil.onnx"] = {"sha256": case.evil_sha, "bytes": 1}
    case.write_manifest(manifest)
    return case.bundle


def external_data(case: Case) -> Path:
    """The model keeps a weight in '../outside/w.bin' (planted, with the right bytes)."""
    model = onnx.load(str(case.bundle / MODEL))
    tensor = model.graph.initializer[0]
    (case.outside / "w.bin").write_bytes(tensor.raw_data or onnx.numpy_helper.to_array(tensor).tobytes())
    onnx.external_data_helper.set_external_data(tensor, location="../../outside/w.bin")
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    (case.bundle / MODEL).write_bytes(model.SerializeToString())
    case.rehash(MODEL)
    return case.bundle


def path_cases() -> Iterator[tuple[str, Mutation]]:
    for where in ("model", "engine_files", "engine_dir"):
        for kind in (
            "absolute",
            "dotdot",
            "inner-dotdot",
            "dot",
            "double-slash",
            "backslash",
            "nul",
            "drive",
            "trailing-slash",
            "control-file",
            "unlisted",
        ):
            for listed in (False, True):
                if not (listed and kind in ("control-file", "unlisted")):
                    yield f"path-{where}-{kind}{'-listed' if listed else ''}", escape(where, kind, listed)
    yield "path-symlink-file", symlink_file
    yield "path-symlink-dir", symlink_dir
    yield "path-symlink-manifest", symlink_manifest
    yield "path-listed-outside-only", listed_outside_only
    yield "path-external-data", external_data


def raw_manifest(data: bytes) -> Mutation:
    def mutate(case: Case) -> Path:
        (case.bundle / bundle.MANIFEST).write_bytes(data)
        return case.bundle

    return mutate


def json_cases() -> Iterator[tuple[str, Mutation]]:
    good = b'{"schema_version": 1, "files": {}}'
    yield "json-empty", raw_manifest(b"")
    yield "json-truncated", raw_manifest(good[:-5])
    yield "json-not-utf8", raw_manifest(b'{"schema_version": 1, "files": {}, "target": "\xff\xfe"}')
    yield "json-utf16", raw_manifest(good.decode().encode("utf-16"))
    yield "json-bom", raw_manifest(b"\xef\xbb\xbf" + good)
    yield "json-array", raw_manifest(b"[1, 2]")
    yield "json-deep", raw_manifest(b"[" * 100_000 + b"]" * 100_000)
    yield "json-huge-int", raw_manifest(b'{"schema_version": 1' + b"0" * 5000 + b', "files": {}}')
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        yield (
            f"json-{literal.decode()}",
            raw_manifest(b'{"schema_version": 1, "files": {}, "golden_frames": ' + literal + b"}"),
        )

    def duplicate(case: Case) -> Path:
        text = (case.bundle / bundle.MANIFEST).read_text()
        (case.bundle / bundle.MANIFEST).write_text(
            text.replace('"model": ', '"model": "/etc/x", "model": ', 1)
        )
        return case.bundle

    def oversize(case: Case) -> Path:
        (case.bundle / bundle.MANIFEST).write_bytes(b" " * (bundle.MAX_JSON_BYTES + 1) + b"{}")
        return case.bundle

    def missing(case: Case) -> Path:
        (case.bundle / bundle.MANIFEST).unlink()
        return case.bundle

    def directory(case: Case) -> Path:
        (case.bundle / bundle.MANIFEST).unlink()
        (case.bundle / bundle.MANIFEST).mkdir()
        return case.bundle

    yield "json-duplicate-key", duplicate
    yield "json-oversize", oversize
    yield "json-missing", missing
    yield "json-directory", directory
    yield "field-unknown", set_field("surprise", 1)
    yield "field-golden_frames-more-than-listed", set_field("golden_frames", 3)
    yield "field-files-entry-extra-key", set_field("files.lowered/cpu.onnx.extra", 1)

    def entry_not_object(case: Case) -> Path:
        manifest = case.manifest()
        manifest["files"][MODEL] = "x"
        case.write_manifest(manifest)
        return case.bundle

    yield "field-files-entry-not-object", entry_not_object
    yield "field-target_info-tensorrt-backend-without-version", set_field("target_info.backend", "tensorrt")


# --- golden data --------------------------------------------------------------------------------


def npz_of(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # np.savez pickles object arrays: exactly the hostile case
    return buf.getvalue()


def golden(rel: str, make: Callable[[dict[str, np.ndarray]], bytes]) -> Mutation:
    """Replace golden file ``rel`` with make(its arrays) and rehash it (integrity then passes)."""

    def mutate(case: Case) -> Path:
        path = case.bundle / rel
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        path.write_bytes(make(arrays))
        case.rehash(rel)
        return case.bundle

    return mutate


def patched_zip_size(data: bytes, size: int) -> bytes:
    """The zip with its (first) central directory entry's uncompressed size set to ``size``."""
    at = data.index(b"PK\x01\x02") + 24
    return data[:at] + size.to_bytes(4, "little") + data[at + 4 :]


def npy_with_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return npz_raw({"points.npy": buf.getvalue() + b"\x00" * 64})


def npz_raw(members: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def golden_cases() -> Iterator[tuple[str, Mutation]]:
    inputs, outputs = "golden/inputs_0.npz", "golden/outputs_0.npz"
    first = lambda a: next(iter(a))  # noqa: E731
    yield (
        "golden-inputs-object-array",
        golden(inputs, lambda a: npz_of(points=np.array([{"a": 1}], dtype=object))),
    )
    yield (
        "golden-outputs-object-array",
        golden(outputs, lambda a: npz_of(**{first(a): np.array([None], dtype=object)})),
    )
    yield (
        "golden-inputs-wrong-columns",
        golden(inputs, lambda a: bundle.npz_bytes({"points": a["points"][:, :3]})),
    )
    yield (
        "golden-inputs-wrong-rank",
        golden(inputs, lambda a: bundle.npz_bytes({"points": a["points"].ravel()})),
    )
    yield (
        "golden-inputs-float64",
        golden(inputs, lambda a: bundle.npz_bytes({"points": a["points"].astype(np.float64)})),
    )
    yield (
        "golden-inputs-int32",
        golden(inputs, lambda a: bundle.npz_bytes({"points": a["points"].astype(np.int32)})),
    )
    yield "golden-inputs-renamed", golden(inputs, lambda a: bundle.npz_bytes({"pts": a["points"]}))
    yield "golden-inputs-extra", golden(inputs, lambda a: bundle.npz_bytes({**a, "extra": a["points"]}))
    yield (
        "golden-inputs-complex",
        golden(inputs, lambda a: bundle.npz_bytes({"points": a["points"].astype(np.complex64)})),
    )
    yield "golden-inputs-strings", golden(inputs, lambda a: npz_of(points=np.array(["a", "b"])))
    yield (
        "golden-inputs-structured",
        golden(inputs, lambda a: npz_of(points=np.zeros(3, dtype=[("a", "<f4")]))),
    )
    yield "golden-outputs-missing", golden(outputs, lambda a: bundle.npz_bytes({"other": a[first(a)]}))
    yield "golden-outputs-extra", golden(outputs, lambda a: bundle.npz_bytes({**a, "extra": a[first(a)]}))
    yield (
        "golden-outputs-wrong-shape",
        golden(outputs, lambda a: bundle.npz_bytes({k: v[..., :1] for k, v in a.items()})),
    )
    yield "golden-outputs-empty", golden(outputs, lambda a: npz_raw({}))
    yield "golden-inputs-not-zip", golden(inputs, lambda a: b"not a zip archive at all")
    yield (
        "golden-inputs-truncated",
        golden(inputs, lambda a: bundle.npz_bytes(a)[: len(bundle.npz_bytes(a)) // 2]),
    )
    yield "golden-inputs-member-not-npy", golden(inputs, lambda a: npz_raw({"points.txt": b"1 2 3"}))
    yield "golden-inputs-member-in-folder", golden(inputs, lambda a: npz_raw({"a/points.npy": b""}))
    yield (
        "golden-inputs-npy-bad-magic",
        golden(inputs, lambda a: npz_raw({"points.npy": b"\x93NUMPX" + b"\x00" * 64})),
    )
    yield "golden-inputs-npy-shape-lie", golden(inputs, lambda a: npy_with_header((10**12, 4)))
    yield (
        "golden-inputs-zip-size-lie-huge",
        golden(inputs, lambda a: patched_zip_size(npz_raw({"points.npy": b"\x00" * 64}), 0xFFFFFFFF)),
    )
    yield (
        "golden-inputs-zip-size-lie-small",
        golden(inputs, lambda a: patched_zip_size(bundle.npz_bytes(a), 10)),
    )

    def tolerances(text: bytes) -> Mutation:
        def mutate(case: Case) -> Path:
            (case.bundle / "golden" / "tolerances.json").write_bytes(text)
            case.rehash("golden/tolerances.json")
            return case.bundle

        return mutate

    entry = b'{"fp32": {"output": {"rtol_of_max": %s, "atol": 0.0, "exact": false}}}'
    for name, value in (
        ("negative", b"-1"),
        ("string", b'"big"'),
        ("nan", b"NaN"),
        ("inf", b"1e999"),
        ("bool", b"true"),
    ):
        yield f"golden-tolerance-{name}", tolerances(entry % value)
    yield "golden-tolerances-no-fp32", tolerances(b'{"fp16": {}}')
    yield "golden-tolerances-not-json", tolerances(b"{fp32:")
    yield "golden-tolerances-not-utf8", tolerances(b'{"fp32": {"\xff": 1}}')

    def model_bytes(make: Callable[[bytes], bytes]) -> Mutation:
        def mutate(case: Case) -> Path:
            path = case.bundle / MODEL
            path.write_bytes(make(path.read_bytes()))
            case.rehash(MODEL)
            return case.bundle

        return mutate

    yield "model-truncated", model_bytes(lambda b: b[: len(b) // 2])
    yield "model-garbage", model_bytes(lambda b: os.urandom(256))
    yield "model-empty", model_bytes(lambda b: b"")


# --- archives, truncation, size lies, signatures ------------------------------------------------


def archive_from(make: Callable[[bytes], bytes]) -> Mutation:
    def mutate(case: Case) -> Path:
        return case.archive(make(bundle.tar_gz_bytes(case.bundle)))

    return mutate


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]], tail: bytes = b"\x00" * 1024) -> bytes:
    raw = b"".join(
        info.tobuf(tarfile.PAX_FORMAT) + data + b"\x00" * (-len(data) % 512) for info, data in members
    )
    return gzip.compress(raw + tail, mtime=0)


def declared(name: str, size: int, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, link
    return info, data


def archive_cases() -> Iterator[tuple[str, Mutation]]:
    for fraction in (0.02, 0.3, 0.6, 0.95):
        yield f"archive-truncated-{fraction}", archive_from(lambda d, f=fraction: d[: int(len(d) * f)])
    yield "archive-truncated-trailer", archive_from(lambda d: d[:-4])
    yield "archive-truncated-last-byte", archive_from(lambda d: d[:-1])
    yield "archive-trailing-garbage", archive_from(lambda d: d + b"garbage after the gzip stream")
    yield "archive-empty", archive_from(lambda d: b"")
    yield "archive-not-gzip", archive_from(lambda d: b"this is not an archive" * 20)
    yield "archive-gzip-not-tar", archive_from(lambda d: gzip.compress(b"hello " * 1000))
    yield "archive-bit-flip", archive_from(lambda d: d[:100] + bytes([d[100] ^ 0xFF]) + d[101:])
    yield "archive-tar-truncated", archive_from(lambda d: gzip.decompress(d)[:5000])
    yield (
        "archive-tar-garbage-after-end",
        archive_from(lambda d: gzip.compress(gzip.decompress(d) + b"x" * 512)),
    )
    yield (
        "archive-member-huge-size",
        archive_from(lambda d: tar_of([declared("manifest.json", 1 << 40, b"{}")])),
    )
    yield (
        "archive-member-size-lie-short",
        archive_from(lambda d: tar_of([declared("manifest.json", 4000, b"{}")], b"")),
    )
    yield "archive-member-dotdot", archive_from(lambda d: tar_of([declared("../outside/x", 2, b"{}")]))
    yield "archive-member-absolute", archive_from(lambda d: tar_of([declared("/tmp/x", 2, b"{}")]))
    yield (
        "archive-member-symlink",
        archive_from(
            lambda d: tar_of([declared("manifest.json", 0, kind=tarfile.SYMTYPE, link="/etc/passwd")])
        ),
    )
    yield (
        "archive-member-hardlink",
        archive_from(
            lambda d: tar_of(
                [declared("lowered/cpu.onnx", 0, kind=tarfile.LNKTYPE, link="../outside/evil.onnx")]
            )
        ),
    )

    def repacked(mutation: Mutation) -> Mutation:
        def mutate(case: Case) -> Path:
            mutation(case)
            return case.archive()

        return mutate

    yield "archive-model-absolute", repacked(escape("model", "absolute", True))
    yield "archive-engine-dotdot", repacked(escape("engine_files", "dotdot", True))
    yield (
        "archive-golden-object",
        repacked(golden("golden/inputs_0.npz", lambda a: npz_of(points=np.array([1], dtype=object)))),
    )

    def file_size_lie(case: Case) -> Path:
        manifest = case.manifest()
        manifest["files"][MODEL]["bytes"] = 1 << 39
        case.write_manifest(manifest)
        return case.bundle

    def truncated_file(case: Case) -> Path:
        path = case.bundle / MODEL
        path.write_bytes(path.read_bytes()[:100])
        return case.bundle

    yield "file-size-lie", file_size_lie
    yield "file-truncated", truncated_file


def signature_cases() -> Iterator[tuple[str, Mutation]]:
    def signed(key_args: Callable[[Case, Path], list[str]], sig: bytes | None = None) -> Mutation:
        def mutate(case: Case) -> Path:
            keys = case.root / "keys"
            keys.mkdir()
            priv, pub = keypair(keys, "signer")
            data = (case.bundle / bundle.MANIFEST).read_bytes()
            (case.bundle / bundle.SIGNATURE).write_bytes(bundle.sign(data, priv) if sig is None else sig)
            case.extra_args = key_args(case, pub)
            return case.bundle

        return mutate

    yield "signature-no-key", signed(lambda c, pub: [])
    yield (
        "signature-wrong-key",
        signed(lambda c, pub: ["--public-key", str(keypair(c.root / "keys", "other")[1])]),
    )
    yield "signature-garbage", signed(lambda c, pub: ["--public-key", str(pub)], sig=b"\x00" * 64)
    yield "signature-oversize", signed(lambda c, pub: ["--public-key", str(pub)], sig=b"\x00" * 4096)

    def unsigned_with_key(case: Case) -> Path:
        case.extra_args = ["--public-key", str(keypair(case.root, "signer")[1])]
        return case.bundle

    yield "signature-missing-with-key", unsigned_with_key


CASES = dict(
    [*field_cases(), *path_cases(), *json_cases(), *golden_cases(), *archive_cases(), *signature_cases()]
)
EXIT_1 = (
    "path-",
    "archive-model",
    "archive-engine",
    "archive-member-dotdot",
    "archive-member-absolute",
    "archive-member-symlink",
    "archive-member-hardlink",
    "signature-no-key",
    "signature-wrong-key",
    "signature-garbage",
    "signature-missing-with-key",
    "file-",
)


# --- the harness --------------------------------------------------------------------------------

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            out[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    out.pop("tmp")  # the temp folder (verify's extraction) changes; it must end empty
    return out


@pytest.fixture()
def run_verify(monkeypatch):
    """verify --run on a case, recording every file opened and every model given to ORT."""
    import onnxruntime as ort

    ran: list[str] = []
    real = ort.InferenceSession

    def session(model, *args, **kwargs):
        ran.append(hashlib.sha256(model).hexdigest() if isinstance(model, bytes) else f"path:{model}")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)

    def verify(case: Case, target: Path) -> tuple[int, list[str], list[str]]:
        global _OPENED
        monkeypatch.setattr(tempfile, "tempdir", str(case.root / "tmp"))
        _OPENED = []
        try:
            rc = main(["verify", str(target), "--run", *case.extra_args])
        finally:
            opened, _OPENED = _OPENED, None
        return rc, opened, ran

    return verify


def assert_contained(case: Case, opened: list[str], ran: list[str], before: dict) -> None:
    outside = case.outside.resolve()
    reached = [p for p in opened if outside == Path(p).resolve() or outside in Path(p).resolve().parents]
    assert not reached, f"opened outside the bundle: {reached}"
    assert case.evil_sha not in ran and not any(r.startswith("path:") for r in ran)
    assert snapshot(case.root) == before, "verify wrote, moved or deleted something"
    assert not any((case.root / "tmp").iterdir())


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_bundle_is_refused_in_one_line(pristine, tmp_path, capsys, run_verify, name):
    case = make_case(pristine, tmp_path)
    target = CASES[name](case)
    before = snapshot(case.root)
    capsys.readouterr()
    rc, opened, ran = run_verify(case, target)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc in (1, 2), (rc, out, err)
    if name.startswith(EXIT_1):
        assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0], err
    assert "Traceback" not in out + err and "verify: PASS" not in out
    assert_contained(case, opened, ran, before)


def test_the_pristine_bundle_passes_under_the_same_harness(pristine, tmp_path, capsys, run_verify):
    """The harness can tell: the real bundle passes, and its opens and model runs are recorded."""
    case = make_case(pristine, tmp_path)
    for target in (case.bundle, case.archive()):
        before = snapshot(case.root)
        rc, opened, ran = run_verify(case, target)
        out, err = capsys.readouterr()
        assert rc == 0 and "verify: PASS" in out and err == "", err
        assert any(p.endswith("golden/inputs_1.npz") for p in opened)
        assert sha256_file(case.bundle / MODEL) in ran
        assert_contained(case, opened, ran, before)
    assert len(CASES) >= 200  # the corpus is generated: fields x kinds, paths x escapes, ...


def test_golden_data_edited_with_its_tolerances_passes_unsigned_only(pristine, tmp_path, capsys, run_verify):
    """The documented limit: an unsigned bundle's golden data can be forged consistently; a signed
    one checked with --public-key cannot."""
    case = make_case(pristine, tmp_path)
    priv, pub = keypair(tmp_path, "signer")
    golden("golden/outputs_0.npz", lambda a: bundle.npz_bytes({k: v + 1.0 for k, v in a.items()}))(case)
    table = b'{"fp32": {"output": {"rtol_of_max": 0.0, "atol": 10.0, "exact": false}}}'
    (case.bundle / "golden" / "tolerances.json").write_bytes(table)
    case.rehash("golden/tolerances.json")
    assert run_verify(case, case.bundle)[0] == 0
    assert "verify: PASS" in capsys.readouterr().out
    original = (pristine / bundle.MANIFEST).read_bytes()
    (case.bundle / bundle.SIGNATURE).write_bytes(bundle.sign(original, priv))  # signed before the edit
    case.extra_args = ["--public-key", str(pub)]
    assert run_verify(case, case.bundle)[0] == 1
    assert "signature check failed" in capsys.readouterr().err


def test_a_signed_bundle_passes_with_its_key_or_the_explicit_opt_out(pristine, tmp_path, capsys, run_verify):
    case = make_case(pristine, tmp_path)
    priv, pub = keypair(tmp_path, "signer")
    (case.bundle / bundle.SIGNATURE).write_bytes(
        bundle.sign((case.bundle / bundle.MANIFEST).read_bytes(), priv)
    )
    case.extra_args = ["--public-key", str(pub)]
    assert run_verify(case, case.bundle)[0] == 0
    case.extra_args = ["--allow-unverified-signature"]
    assert run_verify(case, case.bundle)[0] == 0
    assert "signature: present, NOT checked" in capsys.readouterr().out
    case.extra_args = []
    assert run_verify(case, case.bundle)[0] == 1
    err = capsys.readouterr().err
    assert "no --public-key" in err and "--allow-unverified-signature" in err


def test_extraction_reads_a_bounded_amount_of_a_decompression_bomb(tmp_path):
    """64 MiB of zeros in a member declaring 64 MiB: refused at the limit, not decompressed whole."""
    raw = tarfile.TarInfo("manifest.json")
    raw.size = 64 << 20
    bomb = gzip.compress(raw.tobuf() + b"\x00" * (64 << 20) + b"\x00" * 1024, compresslevel=1)
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(bomb)
    with pytest.raises(bundle.BundleError, match="declares more than|expands past"):
        bundle.safe_extract(archive, tmp_path / "dest", max_bytes=1 << 20)
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


@pytest.mark.parametrize(
    "name", ["path-model-absolute-listed", "golden-inputs-object-array", "archive-truncated-0.6"]
)
def test_the_cli_process_prints_one_line_and_no_traceback(pristine, tmp_path, name):
    case = make_case(pristine, tmp_path)
    target = CASES[name](case)
    env = {**os.environ, "TMPDIR": str(case.root / "tmp")}
    proc = subprocess.run(
        [sys.executable, "-m", "sparsefuse.compiler.cli", "verify", str(target), "--run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode in (1, 2)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0], proc.stderr
    # onnxruntime's native module writes $TMPDIR/.ses when it loads (its own session file, not ours)
    assert [p.name for p in (case.root / "tmp").iterdir() if p.name != ".ses"] == []
