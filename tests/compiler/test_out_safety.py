"""Nothing outside OUT is ever touched, and a failed stage deletes only what we wrote: bad target tags
are refused at config time, ``remove_outputs`` refuses paths that leave OUT, and a user's own files
in OUT survive a failed stage."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import pytest

from sparsefuse.atomic import write_text
from sparsefuse.compiler.cli import main
from sparsefuse.compiler.config import make_config
from sparsefuse.compiler.stages import StageRunner, inside_out, remove_outputs
from sparsefuse.errors import SparsefuseError
from sparsefuse.layout import check_tag, engine_rel
from sparsefuse.targets.registry import Target, load_target_file

VERSIONS = {"tool": "1.0"}
# Tags that must never name a target: each would put a path component outside OUT/engine/ or break
# a generated script's line.
BAD_TAGS = ["..", ".", "../..", "lab/../x", "lab/..", "../lab", "/abs", "/etc/passwd", "lab/", "a/b/c",
            "a\nb", "lab/orin\n", "a b", "$(touch PWNED)", "", "lab//orin", "lab\\orin", "-x"]
GOOD_TAGS = ["cpu", "desktop/h100", "jetson/agx-orin-64gb", "lab/my-orin", "lab/orin_v2.1"]


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string (escapes the characters TOML would reject raw)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _user_toml(tmp_path: Path, tag: str) -> Path:
    """A valid user target file (the built-in Orin record) with ``tag`` in place of its own."""
    text = files("sparsefuse.targets").joinpath("registry", "jetson-agx-orin-64gb.toml").read_text()
    assert 'tag = "jetson/agx-orin-64gb"' in text
    path = tmp_path / "user.toml"
    path.write_text(text.replace('tag = "jetson/agx-orin-64gb"', f"tag = {_toml_string(tag)}", 1))
    return path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_a_bad_tag_in_a_user_toml_is_refused_naming_field_and_file(tmp_path, tag):
    path = _user_toml(tmp_path, tag)
    with pytest.raises(SparsefuseError) as err:
        load_target_file(path)
    assert "field 'tag'" in err.value.message and str(path) in err.value.message
    assert "\n" not in err.value.one_line() and "kind/name" in err.value.hint
    with pytest.raises(SparsefuseError):
        engine_rel(tag)  # the layout refuses it too, whoever built the tag
    with pytest.raises(SparsefuseError):
        Target(tag=tag, name="built in code", kind="cpu", backend="onnxruntime")


@pytest.mark.parametrize("tag", GOOD_TAGS)
def test_good_tags_load_and_stay_one_folder_under_engine(tmp_path, tag):
    assert load_target_file(_user_toml(tmp_path, tag)).tag == tag
    rel = engine_rel(check_tag(tag))
    assert rel.count("/") == 1 and ".." not in rel.split("/")


@pytest.mark.parametrize("tag", ["..", "lab/../x", "/abs", "a\nb"])
def test_compile_with_a_bad_tag_fails_at_config_time_before_any_work(tmp_path, capsys, tag):
    toml = _user_toml(tmp_path, tag)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    (out / "engine").mkdir()
    (out / "engine" / "notes.txt").write_text("also theirs")
    before = _snapshot(out)
    with pytest.raises(SparsefuseError, match="field 'tag'"):
        make_config("bevfusion-tiny", str(toml), out)
    code = main(["compile", "--model", "bevfusion-tiny", "--target", str(toml), "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "field 'tag'" in lines[0]
    assert "Traceback" not in err
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["engine", "mine.txt"]


@pytest.mark.parametrize("rel", [".", "", "..", "engine/..", "engine/../..", "../elsewhere.txt", "/abs.txt"])
def test_remove_outputs_refuses_paths_not_strictly_inside_out(tmp_path, rel):
    out = tmp_path / "out"
    (out / "engine").mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    (tmp_path / "elsewhere.txt").write_text("keep")
    before = _snapshot(tmp_path)
    with pytest.raises(SparsefuseError, match="refusing"):
        remove_outputs(out, ["engine/ok.txt", rel.replace("/abs.txt", str(tmp_path / "elsewhere.txt"))])
    assert _snapshot(tmp_path) == before


def test_remove_outputs_refuses_symlinks_that_leave_out_and_never_removes_folders(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "engine" / "cpu").mkdir(parents=True)
    outside.mkdir()
    (outside / "model.plan").write_text("not ours")
    (out / "engine" / "cpu" / "mine.txt").write_text("keep")
    os.symlink(outside, out / "engine" / "link")
    os.symlink(outside / "model.plan", out / "plan.lnk")
    for rel in ["engine/link/model.plan", "engine/link", "plan.lnk"]:
        with pytest.raises(SparsefuseError, match="refusing"):
            remove_outputs(out, [rel])
    assert (outside / "model.plan").read_text() == "not ours"
    remove_outputs(out, ["engine/cpu", "engine"])  # folders are not deleted wholesale
    assert (out / "engine" / "cpu" / "mine.txt").read_text() == "keep"
    assert inside_out(out, "engine/cpu") == (out / "engine" / "cpu").resolve()


def test_a_stage_with_an_output_outside_out_is_refused_before_it_runs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    calls: list[int] = []
    with pytest.raises(SparsefuseError, match="refusing"):
        StageRunner(out, VERSIONS).run("build", {}, {}, ["engine/.."], lambda: calls.append(1))
    assert calls == [] and (out / "mine.txt").read_text() == "keep"


def test_a_cache_folder_linked_elsewhere_is_refused_before_the_stage_runs(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / ".cache")
    calls: list[int] = []
    with pytest.raises(SparsefuseError, match="refusing"):
        StageRunner(out, VERSIONS).run("s", {}, {}, ["a.txt"], lambda: calls.append(1))
    assert calls == [] and not any(outside.iterdir())


def test_a_failed_stage_deletes_only_what_it_wrote(tmp_path):
    out = tmp_path / "out"

    def first() -> None:
        write_text(out / "engine/x/old.sh", "recorded by the first run")
        write_text(out / "report.md", "recorded too")

    StageRunner(out, VERSIONS).run("build", {"in": "a"}, {}, ["engine/x", "report.md"], first)
    planted = {"mine.txt": "user", "engine/notes.txt": "user", "engine/x/mine.txt": "user",
               "engine/x/keep/deep.txt": "user"}
    for rel, text in planted.items():
        write_text(out / rel, text)

    def failing() -> None:
        write_text(out / "engine/x/new.sh", "written by the failing run")
        write_text(out / "engine/x/sub/partial.bin", "written by the failing run")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        StageRunner(out, VERSIONS).run("build", {"in": "b"}, {}, ["engine/x", "report.md"], failing)
    assert {rel: (out / rel).read_text() for rel in planted} == planted
    for gone in ["engine/x/old.sh", "engine/x/new.sh", "engine/x/sub", "report.md", ".cache/build.json"]:
        assert not (out / gone).exists(), gone


def test_a_failed_build_stage_of_a_real_compile_keeps_the_users_files(tmp_path, monkeypatch, capsys):
    import sparsefuse.targets.engine as engine

    def broken(*args, **kwargs):
        raise SparsefuseError("engine build failed (test)", "none")

    monkeypatch.setattr(engine, "emit_engine_artifacts", broken)
    out = tmp_path / "out"
    write_text(out / "mine.txt", "user")
    write_text(out / "engine/notes.txt", "user")
    argv = ["compile", "--model", "bevfusion-tiny", "--target", "jetson/agx-orin-64gb", "--out", str(out)]
    code = main(argv)
    assert code == 2 and "engine build failed (test)" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "user" and (out / "engine/notes.txt").read_text() == "user"
    assert (out / "export/model.onnx").is_file()  # earlier stages' artifacts stay
    assert not (out / "engine/jetson_agx-orin-64gb").exists() and not (out / "compile.json").exists()
