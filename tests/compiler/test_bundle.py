"""Bundle format: deterministic npz / tar.gz, integrity, ed25519 signature, safe extraction."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from signing_keys import keypair

from sparsefuse.compiler import bundle
from sparsefuse.compiler.bundle import BundleError


def make_tree(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "m.onnx").write_bytes(b"\x08\x09fake-onnx")
    (root / "golden").mkdir()
    (root / "golden" / "inputs_0.npz").write_bytes(bundle.npz_bytes({"x": np.arange(6, dtype=np.float32)}))
    (root / "engine").mkdir()
    (root / "engine" / "build_engine.sh").write_text("#!/bin/sh\necho build\n")
    (root / "engine" / "build_engine.sh").chmod(0o755)
    manifest = bundle.build_manifest(root, {"target": "cpu"})
    (root / bundle.MANIFEST).write_bytes(bundle.json_bytes(manifest))
    return root



def test_npz_bytes_are_deterministic_and_loadable(tmp_path):
    arrays = {"b": np.arange(12, dtype=np.int32).reshape(3, 4), "a": np.linspace(0, 1, 5, dtype=np.float32)}
    first = bundle.npz_bytes(arrays)
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    assert bundle.npz_bytes(dict(reversed(arrays.items()))) == first
    (tmp_path / "x.npz").write_bytes(first)
    with np.load(tmp_path / "x.npz") as data:
        assert sorted(data.files) == ["a", "b"]
        np.testing.assert_array_equal(data["b"], arrays["b"])
        assert data["b"].dtype == np.int32


def test_tar_gz_is_deterministic_across_mtimes(tmp_path):
    root = make_tree(tmp_path / "b")
    first = bundle.tar_gz_bytes(root)
    for path in root.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert bundle.tar_gz_bytes(root) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    modes = {m.name: m.mode for m in members}
    assert modes["engine/build_engine.sh"] == 0o755 and modes["model/m.onnx"] == 0o644
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime


def test_integrity_names_modified_missing_and_extra_files(tmp_path):
    root = make_tree(tmp_path / "b")
    assert bundle.check_integrity(root)["target"] == "cpu"
    (root / "model" / "m.onnx").write_bytes(b"tampered")
    (root / "golden" / "inputs_0.npz").unlink()
    (root / "notes.txt").write_text("extra")
    with pytest.raises(BundleError) as err:
        bundle.check_integrity(root)
    text = err.value.message
    assert "modified: model/m.onnx" in text
    assert "missing: golden/inputs_0.npz" in text
    assert "extra: notes.txt" in text


def test_integrity_refuses_symlinks_in_a_bundle_dir(tmp_path):
    root = make_tree(tmp_path / "b")
    (root / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symbolic link: link"):
        bundle.check_integrity(root)


def test_manifest_path_traversal_is_reported(tmp_path):
    root = make_tree(tmp_path / "b")
    manifest = bundle.read_manifest(root)
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
    (root / bundle.MANIFEST).write_bytes(bundle.json_bytes(manifest))
    assert "unsafe path in manifest: ../outside (path traversal)" in bundle.integrity_problems(root, manifest)


def test_signature_roundtrip_tamper_and_wrong_key(tmp_path):
    root = make_tree(tmp_path / "b")
    priv, pub = keypair(tmp_path, "signer")
    _, other_pub = keypair(tmp_path, "other")
    (root / bundle.SIGNATURE).write_bytes(bundle.sign((root / bundle.MANIFEST).read_bytes(), priv))
    bundle.check_signature(root, pub)
    with pytest.raises(BundleError, match="signature check failed"):
        bundle.check_signature(root, other_pub)
    manifest = (root / bundle.MANIFEST).read_bytes()
    (root / bundle.MANIFEST).write_bytes(manifest.replace(b'"cpu"', b'"gpu"'))
    with pytest.raises(BundleError, match="signature check failed"):
        bundle.check_signature(root, pub)
    (root / bundle.SIGNATURE).unlink()
    with pytest.raises(BundleError, match="not signed"):
        bundle.check_signature(root, pub)


def test_a_non_ed25519_key_is_a_clear_error(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(bundle.SparsefuseError, match="not an ed25519 key"):
        bundle.sign(b"x", path)


def crafted_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([regular("ok.txt"), regular("../evil.txt")], "path traversal"),
        ([regular("a/../../evil.txt")], "path traversal"),
        ([regular("/etc/evil.txt")], "absolute path"),
        ([link("model.onnx", "/etc/passwd", tarfile.SYMTYPE)], "link to"),
        ([regular("ok.txt"), link("hard.txt", "ok.txt", tarfile.LNKTYPE)], "link to"),
        ([special("fifo", tarfile.FIFOTYPE)], "not a regular file"),
        ([special("dev", tarfile.CHRTYPE)], "not a regular file"),
        ([regular("dup.txt", b"1"), regular("dup.txt", b"2")], "duplicate"),
        ([regular("a/./b.txt")], "non-canonical"),
        ([regular("model"), regular("model/x.onnx")], "both a file and a folder"),
    ],
)
def test_safe_extract_refuses_crafted_archives(tmp_path, members, reason):
    archive = crafted_tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=reason):
        bundle.safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert not dest.exists() or not any(dest.rglob("*"))  # nothing written before the checks pass


def test_safe_extract_roundtrip_keeps_hashes_and_exec_bit(tmp_path):
    root = make_tree(tmp_path / "b")
    archive = bundle.write_tar_gz(root, tmp_path / "b.tar.gz")
    out = bundle.safe_extract(archive, tmp_path / "x")
    assert bundle.check_integrity(out)["files"] == bundle.read_manifest(root)["files"]
    assert os.access(out / "engine" / "build_engine.sh", os.X_OK)
    assert not os.access(out / "model" / "m.onnx", os.X_OK)


def test_safe_extract_refuses_a_non_empty_destination(tmp_path):
    archive = crafted_tar(tmp_path / "ok.tar.gz", [regular("ok.txt")])
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    with pytest.raises(bundle.SparsefuseError, match="not empty"):
        bundle.safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_text() == "mine"


_SEGMENT = st.sampled_from(["a", "b", "..", ".", "model", "x.onnx", ""])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(_SEGMENT, min_size=1, max_size=4), absolute=st.booleans())
def test_extraction_never_writes_outside_the_destination(tmp_path_factory, parts, absolute):
    """Property: a member is extracted iff its name (less a leading './') is a canonical relative
    path (no '..', '.' or empty parts); what is written lands inside the destination, at that name."""
    tmp = tmp_path_factory.mktemp("prop")
    name = ("/" if absolute else "") + "/".join(parts)
    archive = crafted_tar(tmp / "t.tar.gz", [regular(name, b"payload")])
    dest = tmp / "dest"
    canonical = name.removeprefix("./")  # "tar -C dir ." style prefixes are accepted
    unsafe = canonical.startswith("/") or any(p in ("", ".", "..") for p in canonical.split("/"))
    try:
        bundle.safe_extract(archive, dest)
    except BundleError:
        assert unsafe
        assert not any(p.is_file() for p in tmp.rglob("*") if p.name != "t.tar.gz")
        return
    assert not unsafe
    written = [p for p in tmp.rglob("*") if p.is_file() and p.name != "t.tar.gz"]
    assert written == [dest / canonical] and (dest / canonical).read_bytes() == b"payload"


@pytest.mark.parametrize("cut", [0.1, 0.5, -4, -1])
def test_a_truncated_archive_is_damaged_not_unsafe_and_leaves_nothing(tmp_path, cut):
    data = bundle.tar_gz_bytes(make_tree(tmp_path / "b"))
    archive = tmp_path / "t.tar.gz"
    archive.write_bytes(data[: int(len(data) * cut)] if cut > 0 else data[:cut])
    with pytest.raises(bundle.SparsefuseError, match="as a bundle archive|truncated|damaged header") as err:
        bundle.safe_extract(archive, tmp_path / "dest")
    assert not isinstance(err.value, BundleError)
    assert not (tmp_path / "dest").exists() or not any(p.is_file() for p in (tmp_path / "dest").rglob("*"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1e999}', "overflows"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_strict_json_refuses_what_json_loads_lets_through(text, words):
    with pytest.raises(bundle.SparsefuseError, match=words):
        bundle.strict_json(text, "x.json")
    assert bundle.strict_json(b'{"a": [1, 2.5, null]}', "x.json") == {"a": [1, 2.5, None]}
