"""build_engine.sh / profile_engine.sh cannot be injected: names made of shell syntax (ONNX file name,
plugin library, ONNX input names, target tag and TensorRT version) are generated into the scripts,
which are then RUN against a stand-in trtexec. Nothing may execute (no PWNED file appears), and the
stand-in must receive the exact paths. Registry fields that carry shell syntax are refused at load."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx_toys import conv_stack_model

from sparsefuse.compiler.cli import main
from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends import trtexec
from sparsefuse.targets.registry import load_target_file
from sparsefuse.targets.trt_plan import TrtOptions, make_plan

MARK = "PWNED"
# Each core runs `touch PWNED` if it ever reaches a shell unquoted; each wrapper puts it where a
# naive quoting scheme breaks (inside quotes, after a space, after a backslash, after a brace).
CORES = [f"$(touch {MARK})", f"`touch {MARK}`", f";touch {MARK};", f"\ntouch {MARK}\n", f"|touch {MARK}",
         f"&&touch {MARK}", f"}}$(touch {MARK})", f"$'\\n'touch {MARK}", f"${{IFS}}$(touch {MARK})"]
WRAPPERS = ["@", "'@'", '"@"', "a b @", "\\@", "x@y", "'\"@\"'", "-@"]
NAMES = ["plain", "with space", *[w.replace("@", c) for w, c in itertools.product(WRAPPERS, CORES)]]
TARGET = "desktop/l4"
POINTS = TrtOptions.with_point_counts([100])  # the toy model's points input is dynamic


def _fake_trtexec(path: Path) -> Path:
    """A stand-in trtexec that records its arguments NUL-separated (an argument may hold a newline)."""
    path.write_text("#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > \"$FAKE_ARGS\"\n")
    path.chmod(0o755)
    return path


def _run(script: Path, tmp_path: Path, **env: str) -> list[str]:
    """Run ``script`` from a scratch cwd with the stand-in trtexec; the arguments it received."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    args = tmp_path / "args.bin"
    args.unlink(missing_ok=True)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "TRTEXEC": str(_fake_trtexec(tmp_path / "trtexec")), "FAKE_ARGS": str(args)}
    done = subprocess.run(["bash", str(script)], cwd=cwd, env={**base, **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not _pwned(tmp_path)
    return args.read_bytes().decode().split("\0")[:-1]


def _pwned(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name == MARK]


def _flag(argv: list[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    assert len(values) == 1, argv
    return values[0]


def _run_both(plan, tmp_path: Path, **env: str) -> tuple[list[str], list[str]]:
    """Write the recipes for ``plan`` and run build, then profile (with a stand-in engine file)."""
    recipes = trtexec.write_recipes(plan)
    built = _run(recipes.build_script, tmp_path, **env)
    (plan.out_dir / "model.plan").write_bytes(b"")
    profiled = _run(recipes.profile_script, tmp_path, **env)
    return built, profiled


@pytest.fixture(autouse=True)
def _no_marker_outside(tmp_path):
    """The payloads would touch PWNED in the cwd: make sure none landed beside the test run either."""
    yield
    assert not Path(MARK).exists() and not _pwned(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_file_name(tmp_path, name):
    from sparsefuse.targets.registry import get_target

    model = tmp_path / "models" / f"{name}.onnx"
    model.parent.mkdir()
    onnx.save(conv_stack_model(), str(model))
    plan = make_plan(model, get_target(TARGET), POINTS, tmp_path / "out" / "engine")
    plan.out_dir.mkdir(parents=True)
    (plan.out_dir / plan.plugin_library).write_bytes(b"")
    built, profiled = _run_both(plan, tmp_path)
    assert os.path.samefile(_flag(built, "--onnx"), model)
    assert os.path.samefile(_flag(built, "--staticPlugins"), plan.out_dir / plan.plugin_library)
    assert _flag(built, "--saveEngine") == str(plan.out_dir / "model.plan")
    assert _flag(profiled, "--loadEngine") == str(plan.out_dir / "model.plan")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["absolute", "beside the script"])
def test_plugin_library_path(tmp_path, name, where):
    from sparsefuse.targets.registry import get_target

    model = tmp_path / "model.onnx"
    onnx.save(conv_stack_model(), str(model))
    lib = (tmp_path / "libs" if where == "absolute" else tmp_path / "engine") / f"{name}.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    given = str(lib) if where == "absolute" else lib.name
    options = TrtOptions.with_point_counts([100], plugin_library=given)
    plan = make_plan(model, get_target(TARGET), options, tmp_path / "engine")
    built, profiled = _run_both(plan, tmp_path)
    for argv in (built, profiled):
        assert os.path.samefile(_flag(argv, "--staticPlugins"), lib)
    # An override from the environment still wins over the default.
    other = tmp_path / "other.so"
    other.write_bytes(b"")
    argv = _run(plan.out_dir / trtexec.BUILD_SCRIPT, tmp_path, SPARSEFUSE_TRT_PLUGINS=str(other))
    assert _flag(argv, "--staticPlugins") == str(other)


def _dynamic_model(input_name: str) -> onnx.ModelProto:
    """points[n,4] -> Identity, with the input called ``input_name``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["y"])], "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("name", NAMES[::3])
def test_onnx_input_name_in_shape_flags(tmp_path, name):
    from sparsefuse.targets.registry import get_target

    model = tmp_path / "m.onnx"
    onnx.save(_dynamic_model(name), str(model))
    options = TrtOptions(dynamic_dims=((name, (1000, 2000)),))
    built, profiled = _run_both(make_plan(model, get_target(TARGET), options, tmp_path / "e"), tmp_path)
    assert _flag(built, "--minShapes") == f"{name}:768x4"
    assert _flag(profiled, "--shapes") == f"{name}:2000x4"


@pytest.mark.parametrize("name", NAMES[::4])
def test_tag_and_version_reaching_the_renderer_unvalidated(tmp_path, name):
    """Defence in depth: a plan built without the registry's checks still renders inert scripts."""
    from sparsefuse.targets.registry import get_target

    model = tmp_path / "model.onnx"
    onnx.save(conv_stack_model(), str(model))
    plan = make_plan(model, get_target(TARGET), POINTS, tmp_path / "engine")
    plan = dataclasses.replace(plan, target_tag=name, tensorrt_version="10.3" + name,
                               warnings=(f"warning {name}",))
    plan.out_dir.mkdir(parents=True)
    (plan.out_dir / plan.plugin_library).write_bytes(b"")
    _run_both(plan, tmp_path)


USER_TOML = """tag = "lab/l4"
name = "Lab L4"
kind = "desktop"
backend = "tensorrt"
sm = 89
tensorrt = "10.3"
cuda = "12.6"
fp16_dense_tflops = 120.0
dram_gbps = 300.0
[sources]
sm = "lab"
tensorrt = "lab"
cuda = "lab"
fp16_dense_tflops = "lab"
dram_gbps = "lab"
"""


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@pytest.mark.parametrize(("field", "value"), [
    *[("tag", v) for core in CORES for v in (f"lab/{core}", f"lab/l4{core}", core)],
    *[(f, v) for f in ("tensorrt", "cuda") for core in CORES for v in (f"10.3{core}", f"{core}10.3")],
    ("tensorrt", "10.3\n"), ("tensorrt", " 10.3"), ("tensorrt", "10..3"), ("tensorrt", "10.3-rc1"),
])
def test_registry_refuses_shell_syntax_in_tags_and_versions(tmp_path, field, value):
    old = next(line for line in USER_TOML.splitlines() if line.startswith(f"{field} = "))
    path = tmp_path / "lab.toml"
    path.write_text(USER_TOML.replace(old, f"{field} = {_toml_string(value)}", 1))
    with pytest.raises(SparsefuseError) as err:
        load_target_file(path)
    assert f"field '{field}'" in err.value.message and str(path) in err.value.message
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("number", ["nan", "inf", "+inf", "-inf"])
@pytest.mark.parametrize("field", ["fp16_dense_tflops", "dram_gbps"])
def test_registry_refuses_numbers_that_are_not_finite(tmp_path, field, number):
    old = next(line for line in USER_TOML.splitlines() if line.startswith(f"{field} = "))
    path = tmp_path / "lab.toml"
    path.write_text(USER_TOML.replace(old, f"{field} = {number}", 1))
    with pytest.raises(SparsefuseError, match=f"field '{field}'"):
        load_target_file(path)


@pytest.mark.parametrize("version", ["10.3", "11.1.0", "8.5.2.2"])
def test_registry_accepts_versions(tmp_path, version):
    path = tmp_path / "lab.toml"
    path.write_text(USER_TOML.replace('tensorrt = "10.3"', f'tensorrt = "{version}"', 1))
    assert load_target_file(path).tensorrt == version


@pytest.mark.parametrize("name", NAMES[::5])
def test_cli_build_with_a_user_target_and_plugin_lib(tmp_path, name):
    """The whole route: `sparsefuse build --target lab.toml --plugin-lib <name>`, then the scripts."""
    toml = tmp_path / "lab.toml"
    toml.write_text(USER_TOML)
    model = tmp_path / f"{name}.onnx"
    onnx.save(conv_stack_model(), str(model))
    lib = tmp_path / "libs" / f"{name}.so"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    out = tmp_path / "engine"
    argv = ["build", "--onnx", str(model), "--target", str(toml), "--out", str(out), "--plugin-lib", str(lib),
            "--points", "64"]
    assert main(argv) == 0
    built = _run(out / trtexec.BUILD_SCRIPT, tmp_path)
    assert os.path.samefile(_flag(built, "--onnx"), model)
    assert os.path.samefile(_flag(built, "--staticPlugins"), lib)


# Any text without NUL (bash strings cannot hold one): what the shell sees must be exactly the text.
_TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(literal=_TEXT, suffix=_TEXT)
def test_quoting_round_trips_through_bash(literal, suffix):
    assert shutil.which("bash")
    arg = (literal, trtexec.HERE, suffix)
    script = ("HERE='/h e/$(x)'\n" + trtexec._env_default("V", "V_ENV", arg)
              + f"printf '%s\\0' {trtexec._shell(arg)} \"$V\"\n")
    done = subprocess.run(["bash", "-c", script], capture_output=True, env={"PATH": os.environ["PATH"]},
                          timeout=30)
    assert done.returncode == 0, done.stderr
    want = literal + "/h e/$(x)" + suffix
    assert done.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1] == [want, want]
