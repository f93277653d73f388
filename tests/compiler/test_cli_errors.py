"""User mistakes on `sparsefuse compile`: one clear line on stderr, exit 2, no traceback, and no
artifact written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsefuse.compiler.cli import main


def _compile(capsys: pytest.CaptureFixture[str], *extra: str, out: Path) -> tuple[int, str]:
    code = main(["compile", "--model", "bevfusion-tiny", "--target", "cpu", "--out", str(out), *extra])
    return code, capsys.readouterr().err


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_model(tmp_path, capsys):
    code = main(["compile", "--model", "bevfusion-huge", "--target", "cpu", "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, capsys.readouterr().err, "unknown model 'bevfusion-huge'", "bevfusion-tiny")
    assert not (tmp_path / "o").exists()


def test_unknown_target(tmp_path, capsys):
    code = main(["compile", "--model", "bevfusion-tiny", "--target", "tpu-v9", "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, capsys.readouterr().err, "unknown target 'tpu-v9'", "cpu")
    assert not (tmp_path / "o").exists()


def test_unknown_target_is_refused_clearly(tmp_path, capsys):
    # TensorRT targets compile now (tests/compiler/test_compile_targets.py); unknown tags are refused.
    code = main(["compile", "--model", "bevfusion-tiny", "--target", "desktop/h1000",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    _assert_one_line_error(code, err, "unknown target 'desktop/h1000'", "jetson/agx-orin-64gb")
    assert not (tmp_path / "o").exists()


def test_missing_rig(tmp_path, capsys):
    code, err = _compile(capsys, "--rig", str(tmp_path / "nope.json"), out=tmp_path / "o")
    _assert_one_line_error(code, err, "rig file not found", "nope.json")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"cameras": []}), "cameras"),
        (json.dumps([1, 2, 3]), "top level"),
    ],
)
def test_malformed_rig(tmp_path, capsys, content, needle):
    rig = tmp_path / "rig.json"
    rig.write_text(content)
    code, err = _compile(capsys, "--rig", str(rig), out=tmp_path / "o")
    _assert_one_line_error(code, err, "malformed rig", needle)
    assert not (tmp_path / "o").exists()


def test_rig_with_a_bad_field_names_it(tmp_path, capsys):
    from sparsefuse.models.rig import nuscenes_like_rig

    data = nuscenes_like_rig().to_dict()
    data["voxel_size"] = [0.1, -0.1, 0.2]
    rig = tmp_path / "rig.json"
    rig.write_text(json.dumps(data))
    code, err = _compile(capsys, "--rig", str(rig), out=tmp_path / "o")
    _assert_one_line_error(code, err, "malformed rig", "voxel_size")


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, err = _compile(capsys, out=blocker / "out")  # root can write anywhere, but not under a file
    _assert_one_line_error(code, err, "cannot write to output directory", "--out")
    assert blocker.read_text() == "not a directory"


def test_out_is_an_existing_file(tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("x")
    code, err = _compile(capsys, out=target)
    _assert_one_line_error(code, err, "is not a directory")


@pytest.mark.parametrize(("flag", "value"), [("--verify-frames", "0"), ("--seed", "-1")])
def test_bad_numbers(tmp_path, capsys, flag, value):
    code, err = _compile(capsys, flag, value, out=tmp_path / "o")
    _assert_one_line_error(code, err, flag)


def test_missing_weights(tmp_path, capsys):
    code, err = _compile(capsys, "--weights", str(tmp_path / "none.safetensors"), out=tmp_path / "o")
    _assert_one_line_error(code, err, "weights file not found", "--weights")
    assert not (tmp_path / "o").exists()


def test_weights_that_are_not_safetensors(tmp_path, capsys):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 64)
    code, err = _compile(capsys, "--weights", str(junk), out=tmp_path / "o")
    _assert_one_line_error(code, err, "cannot read weights", "safetensors")
