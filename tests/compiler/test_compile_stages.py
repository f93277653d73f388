"""Stage caching and atomic stage outputs, on toy stages (no model)."""

from __future__ import annotations

import pytest

from sparsefuse.atomic import write_text
from sparsefuse.compiler.stages import StageRunner, atomic_dir

VERSIONS = {"tool": "1.0"}


def _writer(out, calls, text="hello"):
    def stage():
        calls.append(text)
        write_text(out / "stage/out.txt", text)
        return {"chars": len(text)}
    return stage


def test_unchanged_stage_is_skipped_and_changes_rerun_it(tmp_path):
    calls: list[str] = []
    first = StageRunner(tmp_path, VERSIONS).run("s", {"in": "abc"}, {"k": 1}, ["stage/out.txt"],
                                                _writer(tmp_path, calls))
    assert not first.cached and first.details == {"chars": 5} and len(calls) == 1
    again = StageRunner(tmp_path, VERSIONS).run("s", {"in": "abc"}, {"k": 1}, ["stage/out.txt"],
                                                _writer(tmp_path, calls))
    assert again.cached and again.key == first.key and again.details == {"chars": 5} and len(calls) == 1
    for inputs, config, versions in [({"in": "abd"}, {"k": 1}, VERSIONS), ({"in": "abc"}, {"k": 2}, VERSIONS),
                                     ({"in": "abc"}, {"k": 1}, {"tool": "1.1"})]:
        record = StageRunner(tmp_path, versions).run("s", inputs, config, ["stage/out.txt"],
                                                     _writer(tmp_path, calls))
        assert not record.cached and record.key != first.key
    assert len(calls) == 4


def test_tampered_output_reruns_the_stage(tmp_path):
    calls: list[str] = []
    runner_args = ("s", {"in": "abc"}, {}, ["stage/out.txt"])
    StageRunner(tmp_path, VERSIONS).run(*runner_args, _writer(tmp_path, calls))
    (tmp_path / "stage/out.txt").write_text("edited by hand")
    record = StageRunner(tmp_path, VERSIONS).run(*runner_args, _writer(tmp_path, calls))
    assert not record.cached and len(calls) == 2
    assert (tmp_path / "stage/out.txt").read_text() == "hello"


def test_interrupted_stage_leaves_none_of_its_outputs(tmp_path):
    calls: list[str] = []
    StageRunner(tmp_path, VERSIONS).run("s", {"in": "abc"}, {}, ["stage/out.txt"], _writer(tmp_path, calls))

    def half_done():
        write_text(tmp_path / "stage/out.txt", "new")  # complete file, incomplete stage
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, VERSIONS).run("s", {"in": "changed"}, {}, ["stage/out.txt"], half_done)
    assert not (tmp_path / "stage/out.txt").exists()
    assert not (tmp_path / ".cache/s.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_dir_replaces_on_success_and_keeps_the_old_one_on_failure(tmp_path):
    dest = tmp_path / "engine" / "cpu"
    with atomic_dir(dest) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "b.bin").write_bytes(b"2")
        raise RuntimeError("build failed")
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]
    with atomic_dir(dest) as tmp:
        (tmp / "c.bin").write_bytes(b"3")
    assert sorted(p.name for p in dest.iterdir()) == ["c.bin"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cpu"]  # no temp or old dirs left
