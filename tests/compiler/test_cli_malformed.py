"""Generated corpus of malformed user inputs for every CLI input class except bundles
(tests/compiler/test_bundle_malformed.py covers those).

Each class is a few valid seeds x mutation kinds, built programmatically: rig files, target TOMLs,
sparsity specs and files, point counts, ONNX files, --inputs npz files, weights files, frames
folders and non-finite numbers bound for JSON artifacts. Every case runs through
``sparsefuse.compiler.cli.main`` in-process and must give: exit 2, exactly one line
``error: ... (hint: ...)`` on stderr, no exception, no input file changed, no file in OUT (no partial
artifact), and nothing unpickled (the pickled payloads would create a marker file). A few cases also
run as real subprocesses, and a SIGTERM sent during a compile must end it like Ctrl-C (exit 143).

Corpus sizes are computed at import (``CORPUS_SIZES``) and checked by
``test_corpus_size_per_class``, which prints them.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsefuse.atomic import write_json
from sparsefuse.compiler.cli import main
from sparsefuse.errors import SparsefuseError
from sparsefuse.models.rig import nuscenes_like_rig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "targets"))
from onnx_toys import conv_stack_model, toy_feeds  # noqa: E402

MARKER = "PICKLE_WAS_LOADED"  # a pickled payload that runs creates this file in the corpus dir


class _Payload:
    """Unpickling this creates MARKER beside the corpus: proof that a file was unpickled."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def __reduce__(self):
        return (Path.touch, (self.where / MARKER,))


@dataclass(frozen=True)
class Case:
    cls: str
    name: str
    argv: Callable[[Path], list[str]]  # corpus dir -> argv (OUT is corpus/out-<id>)
    needle: str = ""  # lower-case text the error line must contain

    @property
    def id(self) -> str:
        return f"{self.cls}:{self.name}"


# ---------------------------------------------------------------------------------- the corpus
# Files are written once per session under one corpus folder by _make_files; cases refer to them
# by name.
FILES: dict[str, Callable[[Path], None]] = {}


def _file(name: str, make: Callable[[Path], None]) -> str:
    FILES[name] = make
    return name


def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "x.txt").write_text("a folder, not a file")


def _out(corpus: Path, case: str) -> str:
    return str(corpus / "outs" / case.replace(":", "_").replace("/", "_"))


RIG_SEED = nuscenes_like_rig().to_dict()
NUMERIC_KINDS = {  # kind -> the JSON text of the bad value
    "nan": "NaN",
    "infinity": "Infinity",
    "minus_infinity": "-Infinity",
    "overflow": "1e999",
    "huge_int": "1" + "0" * 400,
    "string": '"1.0"',
    "bool": "true",
    "null": "null",
    "object": '{"x": 1}',
    "empty_list": "[]",
    "nested": "[[1, 2]]",
}
RIG_FIELDS = (
    "cameras.0.image_size",
    "cameras.0.intrinsics",
    "cameras.0.cam_to_ego",
    "depth_range",
    "point_range",
    "voxel_size",
    "bev_range",
    "bev_cell",
    "lidar_to_ego",
)
SENTINEL = "__SENTINEL__"


def _set(doc: dict, dotted: str, value) -> None:
    keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    for key in keys[:-1]:
        doc = doc[key]
    if value is _DELETE:
        del doc[keys[-1]]
    else:
        doc[keys[-1]] = value


_DELETE = object()


def _rig_text(change: Callable[[dict], None] | None = None, literal: str | None = None) -> bytes:
    doc = copy.deepcopy(RIG_SEED)
    if change:
        change(doc)
    text = json.dumps(doc)
    return (text.replace(f'"{SENTINEL}"', literal) if literal is not None else text).encode()


def _rig_cases() -> list[Case]:
    mutations: dict[str, bytes] = {}
    for field in RIG_FIELDS:
        for kind, literal in NUMERIC_KINDS.items():
            mutations[f"{field}={kind}"] = _rig_text(lambda d, f=field: _set(d, f, SENTINEL), literal)
            if kind in ("nan", "infinity", "overflow", "huge_int", "string", "bool", "null"):
                element = field + (
                    ".0.0"
                    if field in ("cameras.0.intrinsics", "cameras.0.cam_to_ego", "lidar_to_ego")
                    else ".0"
                )
                if field == "bev_cell":
                    continue
                mutations[f"{field}[0]={kind}"] = _rig_text(
                    lambda d, f=element: _set(d, f, SENTINEL), literal
                )
        if field != "lidar_to_ego":  # optional: the identity
            mutations[f"{field} missing"] = _rig_text(lambda d, f=field: _set(d, f, _DELETE))
    identity = [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
    semantic = {  # accepted by the old loader, wrong: refused now
        "singular cam_to_ego": lambda d: _set(
            d, "cameras.0.cam_to_ego", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
        ),
        "mirrored cam_to_ego": lambda d: _set(
            d, "cameras.0.cam_to_ego", [[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        ),
        "projective cam_to_ego": lambda d: _set(d, "cameras.0.cam_to_ego", [*identity[:3], [0, 0, 1, 1]]),
        "all-zero lidar_to_ego": lambda d: _set(d, "lidar_to_ego", [[0.0] * 4] * 4),
        "camera 5 km away": lambda d: _set(d, "cameras.0.cam_to_ego.0.3", 5000.0),
        "lidar 2 km up": lambda d: _set(d, "lidar_to_ego", [*identity[:2], [0, 0, 1, 2000.0], identity[3]]),
        "camera in millimetres": lambda d: _set(d, "cameras.1.cam_to_ego.1.3", -1500.0),
        "0 cameras": lambda d: _set(d, "cameras", []),
        "65 cameras": lambda d: _set(d, "cameras", d["cameras"] * 11),
        "image 0 high": lambda d: _set(d, "cameras.0.image_size", [0, 1600]),
        "image 0 wide": lambda d: _set(d, "cameras.2.image_size", [900, 0]),
        "image 20000 high": lambda d: _set(d, "cameras.0.image_size", [20000, 1600]),
        "image 16385 wide": lambda d: _set(d, "cameras.3.image_size", [900, 16385]),
        "fractional image size": lambda d: _set(d, "cameras.0.image_size", [900.5, 1600]),
        "camera not an object": lambda d: _set(d, "cameras.0", [1, 2]),
        "camera name a list": lambda d: _set(d, "cameras.0.name", ["x"]),
        "rig name a number": lambda d: _set(d, "name", 5),
        "cameras an object": lambda d: _set(d, "cameras", {"a": 1}),
        "BEV cell 1 micrometre": lambda d: _set(d, "bev_cell", 1e-6),
        "BEV range 1000 km": lambda d: _set(d, "bev_range", [-1e6, -1e6, 1e6, 1e6]),
        "voxels 10 micrometres": lambda d: _set(d, "voxel_size", [1e-5, 1e-5, 1e-5]),
        "depth step 0.1 micrometre": lambda d: _set(d, "depth_range", [1.0, 60.0, 1e-7]),
        "depth to 100000 km": lambda d: _set(d, "depth_range", [1.0, 1e8, 0.5]),
        "negative focal length": lambda d: _set(d, "cameras.0.intrinsics.0.0", -1266.0),
        "depth min above max": lambda d: _set(d, "depth_range", [60.0, 1.0, 0.5]),
    }
    for name, change in semantic.items():
        mutations[name] = _rig_text(change)
    whole = _rig_text()
    files = {
        "not UTF-8": b"\xff\xfe" + whole[2:],
        "latin-1 name": whole.replace(b'"nuscenes_6cam"', b'"caf\xe9"'),
        "empty": b"",
        "truncated": whole[: len(whole) // 2],
        "top-level list": b"[1, 2]",
        "top-level NaN": b"NaN",
        "binary": bytes(range(256)),
    }
    mutations.update(files)
    cases = []
    for name, data in mutations.items():
        fname = _file(f"rig/{len(cases):03d}.json", _raw(data))
        cases.append(
            Case(
                "rig",
                name,
                lambda c, f=fname, n=name: _compile_argv(c, f"rig:{n}", "--rig", str(c / f)),
                "rig",
            )
        )
    folder = _file("rig/a_folder.json", _folder)
    cases.append(
        Case("rig", "a directory", lambda c: _compile_argv(c, "rig:dir", "--rig", str(c / folder)), "rig")
    )
    return cases


def _compile_argv(
    corpus: Path, case: str, *extra: str, model: str = "bevfusion-tiny", target: str = "cpu"
) -> list[str]:
    return ["compile", "--model", model, "--target", target, "--out", _out(corpus, case), *extra]


TOML_SEED = Path(__file__).resolve().parents[2] / "targets" / "registry" / "cpu.toml"


def _toml_cases() -> list[Case]:
    seed = TOML_SEED.read_bytes()
    files = {
        "not UTF-8": b"\xff\xfe" + seed,
        "latin-1 comment": b"# caf\xe9\n" + seed,
        "empty": b"",
        "truncated": seed[: len(seed) // 2],
        "binary": bytes(range(256)),
        "NUL bytes": seed.replace(b"\n", b"\x00", 3),
    }
    # Wrong types for fields: the registry validation covers these; the corpus proves it stays one line.
    for field, bad in (
        ("tag", "5"),
        ("backend", "[1]"),
        ("sm", '"x"'),
        ("fp32_tflops", "nan"),
        ("dram_gbps", "inf"),
        ("memory_gb", "-1"),
        ("name", "{a = 1}"),
        ("tag", '"../../x"'),
    ):
        lines = [line for line in seed.decode().splitlines() if not line.startswith(f"{field} =")]
        files[f"{field}={bad}"] = ("\n".join([f"{field} = {bad}", *lines]) + "\n").encode()
    cases = []
    commands = {
        "compile": lambda c, t, n: _compile_argv(c, n, target=t),
        "build": lambda c, t, n: [
            "build",
            "--onnx",
            str(c / "onnx/toy.onnx"),
            "--target",
            t,
            "--out",
            _out(c, n),
        ],
        "profile": lambda c, t, n: [
            "profile",
            "--onnx",
            str(c / "onnx/toy.onnx"),
            "--target",
            t,
            "--out",
            _out(c, n) + "/profile.json",
        ],
    }
    for i, (name, data) in enumerate(files.items()):
        fname = _file(f"toml/{i:02d}.toml", _raw(data))
        for cmd, argv in commands.items():
            cases.append(
                Case(
                    "target_toml",
                    f"{name} ({cmd})",
                    lambda c, f=fname, a=argv, n=f"toml{i}{cmd}": a(c, str(c / f), n),
                    "target",
                )
            )
    folder = _file("toml/folder.toml", _folder)
    for cmd, argv in commands.items():
        cases.append(
            Case(
                "target_toml",
                f"a directory ({cmd})",
                lambda c, a=argv, n=f"tomldir{cmd}": a(c, str(c / folder), n),
                "target",
            )
        )
    return cases


SPARSITY_OPTIONS = {  # option -> a valid value (the seed)
    "beta": "1.0",
    "levels": "21",
    "calib": "4",
    "dp_resolution": "10000",
    "obs_percdamp": "0.01",
    "obs_block": "128",
    "seed": "0",
    "permute": "false",
    "allocator": "lamp",
    "pattern": "2:4",
}
SPEC_KINDS = {
    "nan": "nan",
    "inf": "inf",
    "minus_inf": "-inf",
    "list": "[1]",
    "word": "abc",
    "huge": "1e9",
    "huge_int": "1000000000",
    "negative": "-3",
    "empty": "",
}
FILE_KINDS = {
    "nan": "NaN",
    "inf": "Infinity",
    "list": "[1]",
    "string": '"abc"',
    "huge": "1e9",
    "huge_int": "1000000000",
    "object": '{"a": 1}',
    "bool": "true",
    "null_list": "[null]",
}
# (option, kind) pairs that are a valid setting, so not malformed.
SPARSITY_VALID = {
    ("seed", "huge_int"),
    ("permute", "bool"),
    ("seed", "huge"),
    ("beta", "huge"),
    ("beta", "huge_int"),
    ("obs_percdamp", "empty"),
    ("permute", "empty"),
}


def _sparsity_cases() -> list[Case]:
    cases = []
    for option in SPARSITY_OPTIONS:
        for kind, value in SPEC_KINDS.items():
            if (option, kind) in SPARSITY_VALID or (option, kind) == ("seed", "huge"):
                continue
            spec = f"budget=params=0.5,{option}={value}"
            cases.append(
                Case(
                    "sparsity",
                    f"spec {option}={kind}",
                    lambda c, s=spec, n=f"sp{option}{kind}": _compile_argv(c, n, "--sparsity", s),
                )
            )
        for kind, value in FILE_KINDS.items():
            if (option, kind) in SPARSITY_VALID:
                continue
            fname = _file(
                f"sparsity/{option}-{kind}.json",
                _raw(f'{{"budget": "params=0.5", "{option}": {value}}}'.encode()),
            )
            cases.append(
                Case(
                    "sparsity",
                    f"json {option}={kind}",
                    lambda c, f=fname, n=f"sj{option}{kind}": _compile_argv(c, n, "--sparsity", str(c / f)),
                )
            )
    for kind, value in {
        "nan": "nan",
        "inf": "inf",
        "list": "[0.5]",
        "word": "half",
        "zero": "0",
        "two": "2",
    }.items():
        cases.append(
            Case(
                "sparsity",
                f"budget params={kind}",
                lambda c, v=value, n=f"spb{kind}": _compile_argv(c, n, "--sparsity", f"budget=params={v}"),
            )
        )
        cases.append(
            Case(
                "sparsity",
                f"prune --budget params={kind}",
                lambda c, v=value, n=f"prb{kind}": _prune_argv(c, n, "--budget", f"params={v}"),
            )
        )
    # A spec whose budget names a latency table ends in .json but is a spec, not a sparsity file.
    cases.append(
        Case(
            "sparsity",
            "spec with latency=<table>.json is a spec",
            lambda c: _compile_argv(
                c, "splat", "--sparsity", f"levels=1,budget=latency={c / 'sparsity/table.json'}"
            ),
            "levels",
        )
    )
    cases.append(
        Case(
            "sparsity",
            "latency table missing",
            lambda c: _compile_argv(c, "splatm", "--sparsity", f"budget=latency={c / 'none.json'}"),
            "latency table",
        )
    )
    for flag, value in (
        ("--beta", "nan"),
        ("--beta", "inf"),
        ("--levels", "1000000000"),
        ("--calib", "1000000000"),
        ("--obs-percdamp", "nan"),
        ("--allocator", "best"),
        ("--modality-weights", "camera=nan"),
        ("--modality-weights", "camera"),
        ("--budget", "latency=nowhere.json"),
    ):
        cases.append(
            Case(
                "sparsity",
                f"prune {flag} {value}",
                lambda c, f=flag, v=value, n=f"pr{flag}{value}": _prune_argv(c, n, f, v),
            )
        )
    files = {
        "not UTF-8.json": b'\xff\xfe{"beta": 1}',
        "not UTF-8.toml": b"\xff\xfebeta = 1",
        "empty.json": b"",
        "truncated.json": b'{"beta": 1',
        "list.json": b"[1]",
        "bad.toml": b"beta = ",
        "list.toml": b"beta = [1]",
        "nan.toml": b"beta = nan",
        "huge.toml": b"levels = 1000000000",
        "unknown.json": b'{"gamma": 1}',
        "budget-list.json": b'{"budget": ["params=0.5"]}',
        "budget-number.json": b'{"budget": 0.5}',
        "weights-number.json": b'{"modality_weights": 5}',
        "weights-nan.json": b'{"modality_weights": {"camera": NaN}}',
    }
    for name, data in files.items():
        fname = _file(f"sparsity/file-{name}", _raw(data))
        cases.append(
            Case(
                "sparsity",
                f"file {name}",
                lambda c, f=fname, n=f"sf{name}": _compile_argv(c, n, "--sparsity", str(c / f)),
            )
        )
    folder = _file("sparsity/folder.json", _folder)
    cases.append(
        Case(
            "sparsity",
            "file is a directory",
            lambda c: _compile_argv(c, "sfdir", "--sparsity", str(c / folder)),
            "directory",
        )
    )
    return cases


def _prune_argv(corpus: Path, case: str, *extra: str) -> list[str]:
    return [
        "prune",
        "--model",
        "bevfusion-tiny",
        "--synthetic",
        "--calib",
        "1",
        "--out",
        _out(corpus, case),
        *extra,
    ]


def _points_cases() -> list[Case]:
    cases = []
    for value in ("-1", "-5", "-1000000", "4000001", "1000000000", "1000000000000"):
        cases.append(
            Case(
                "points",
                f"profile --points {value}",
                lambda c, v=value: [
                    "profile",
                    "--onnx",
                    str(c / "onnx/toy.onnx"),
                    "--target",
                    "cpu",
                    "--out",
                    _out(c, f"pp{v}") + "/p.json",
                    "--points",
                    v,
                ],
                "--points",
            )
        )
        cases.append(
            Case(
                "points",
                f"prune --num-points {value}",
                lambda c, v=value: _prune_argv(c, f"pn{v}", "--num-points", v),
                "--num-points",
            )
        )
    return cases


BUILD_POINTS = (["-5"], ["4000001"], ["1000000000000"], ["10", "5", "1"], ["1", "2", "3", "4"], ["3", "2"])


def _build_points_cases() -> list[Case]:
    return [
        Case(
            "points",
            f"build --points {' '.join(values)}",
            lambda c, v=values: [
                "build",
                "--onnx",
                str(c / "onnx/toy.onnx"),
                "--target",
                "jetson/agx-orin-64gb",
                "--out",
                _out(c, "bp" + "_".join(v)),
                "--points",
                *v,
            ],
            "--points",
        )
        for values in BUILD_POINTS
    ]


def _onnx_bytes() -> bytes:
    return conv_stack_model().SerializeToString()


def _onnx_cases() -> list[Case]:
    good = _onnx_bytes()
    files = {
        "empty": b"",
        "truncated to half": good[: len(good) // 2],
        "truncated to 10 bytes": good[:10],
        "random bytes": np.random.default_rng(0).bytes(4096),
        "text": b"this is not a model\n",
        "no graph": onnx.ModelProto(ir_version=10).SerializeToString(),
        "one zero byte": b"\x00",
        "gzip": b"\x1f\x8b\x08\x00" + good[:64],
    }
    for name, data in list(files.items()):
        files[name] = data
    names = {name: _file(f"onnx/{i:02d}.onnx", _raw(data)) for i, (name, data) in enumerate(files.items())}
    names["a directory"] = _file("onnx/folder.onnx", _folder)
    commands = {
        "profile cpu": lambda c, p, n: [
            "profile",
            "--onnx",
            p,
            "--target",
            "cpu",
            "--out",
            _out(c, n) + "/p.json",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--frames",
            "1",
        ],
        "profile estimate": lambda c, p, n: [
            "profile",
            "--onnx",
            p,
            "--target",
            "jetson/agx-orin-64gb",
            "--out",
            _out(c, n) + "/p.json",
            "--frames",
            "1",
        ],
        "build cpu": lambda c, p, n: ["build", "--onnx", p, "--target", "cpu", "--out", _out(c, n)],
        "build tensorrt": lambda c, p, n: [
            "build",
            "--onnx",
            p,
            "--target",
            "jetson/agx-orin-64gb",
            "--out",
            _out(c, n),
        ],
        "regress": lambda c, p, n: [
            "regress",
            "--onnx",
            p,
            "--baseline-onnx",
            str(c / "onnx/toy.onnx"),
            "--inputs",
            str(c / "npz/good.npz"),
            "--runs",
            "5",
            "--warmup",
            "0",
            "--no-plot",
            "--report-dir",
            _out(c, n),
        ],
    }
    cases = []
    for name, fname in names.items():
        for cmd, argv in commands.items():
            cases.append(
                Case(
                    "onnx",
                    f"{name} ({cmd})",
                    lambda c, f=fname, a=argv, n=f"on{fname}{cmd}": a(c, str(c / f), n),
                )
            )
    # A valid ONNX whose inputs the frames do not match: the preset's frames for the toy graph.
    for target in ("cpu", "jetson/agx-orin-64gb"):
        cases.append(
            Case(
                "onnx",
                f"inputs do not match the preset frames ({target})",
                lambda c, t=target: [
                    "profile",
                    "--onnx",
                    str(c / "onnx/toy.onnx"),
                    "--target",
                    t,
                    "--out",
                    _out(c, f"onm{t}") + "/p.json",
                    "--frames",
                    "1",
                ],
                "images",
            )
        )
    return cases


def _npz_cases() -> list[Case]:
    good = toy_feeds(50)
    variants: dict[str, Callable[[Path], None]] = {}

    def npz(**arrays):
        return lambda path: np.savez(path, **arrays)

    variants["images wrong shape"] = npz(images=np.zeros((1, 3, 8, 8), np.float32), points=good["points"])
    variants["images wrong rank"] = npz(images=np.zeros((3, 16, 16), np.float32), points=good["points"])
    variants["points wrong rank"] = npz(images=good["images"], points=np.zeros((50,), np.float32))
    variants["points wrong width"] = npz(images=good["images"], points=np.zeros((50, 5), np.float32))
    variants["images float64"] = npz(images=good["images"].astype(np.float64), points=good["points"])
    variants["points int64"] = npz(images=good["images"], points=good["points"].astype(np.int64))
    variants["images bool"] = npz(images=good["images"] > 0, points=good["points"])
    variants["images missing"] = npz(points=good["points"])
    variants["scalar images"] = npz(images=np.float32(1.0), points=good["points"])
    variants["string array"] = npz(images=np.array(["a", "b"]), points=good["points"])

    def with_objects(path: Path) -> None:
        np.savez(path, images=np.array([_Payload(path.parent), 1], dtype=object), points=good["points"])

    variants["object array (pickle)"] = with_objects
    raw = {"text": b"not an archive", "empty": b"", "random": np.random.default_rng(1).bytes(2048)}
    for name, data in raw.items():
        variants[name] = _raw(data)

    def truncated(path: Path) -> None:
        np.savez(path, **good)
        path.write_bytes(path.read_bytes()[:200])

    def npy(path: Path) -> None:
        with open(path, "wb") as handle:
            np.save(handle, good["images"])

    def pickle_file(path: Path) -> None:
        path.write_bytes(pickle.dumps({"images": _Payload(path.parent)}))

    variants.update(
        {"truncated": truncated, "a single .npy": npy, "a pickle": pickle_file, "a directory": _folder}
    )
    cases = []
    for i, (name, make) in enumerate(variants.items()):
        fname = _file(f"npz/{i:02d}.npz", make)
        cases.append(
            Case(
                "inputs_npz",
                f"{name} (profile)",
                lambda c, f=fname, n=f"np{i}": [
                    "profile",
                    "--onnx",
                    str(c / "onnx/toy.onnx"),
                    "--target",
                    "cpu",
                    "--out",
                    _out(c, n) + "/p.json",
                    "--inputs",
                    str(c / f),
                    "--runs",
                    "1",
                    "--warmup",
                    "0",
                ],
            )
        )
        cases.append(
            Case(
                "inputs_npz",
                f"{name} (regress)",
                lambda c, f=fname, n=f"nr{i}": [
                    "regress",
                    "--onnx",
                    str(c / "onnx/toy.onnx"),
                    "--baseline-onnx",
                    str(c / "onnx/toy.onnx"),
                    "--inputs",
                    str(c / f),
                    "--runs",
                    "5",
                    "--warmup",
                    "0",
                    "--no-plot",
                    "--report-dir",
                    _out(c, n),
                ],
            )
        )
    return cases


def _weights_cases() -> list[Case]:
    from safetensors.numpy import save as save_bytes

    good = save_bytes({"w": np.zeros((4, 4), np.float32)})
    variants: dict[str, Callable[[Path], None]] = {
        "truncated": _raw(good[: len(good) - 20]),
        "header only": _raw(good[:8]),
        "empty": _raw(b""),
        "random": _raw(np.random.default_rng(2).bytes(1024)),
        "huge header length": _raw((10**15).to_bytes(8, "little") + b"{}"),
        "header not JSON": _raw((8).to_bytes(8, "little") + b"notjson!"),
        "a directory": _folder,
        "pickle": lambda p: p.write_bytes(pickle.dumps({"w": _Payload(p.parent)})),
        "wrong tensors": _raw(good),
    }
    cases = []
    for i, (name, make) in enumerate(variants.items()):
        for suffix in (".safetensors", ".pth"):
            fname = _file(f"weights/{i:02d}{suffix}", make)
            cases.append(
                Case(
                    "weights",
                    f"{name}{suffix} (compile)",
                    lambda c, f=fname, n=f"wc{i}{suffix}": _compile_argv(c, n, "--weights", str(c / f)),
                )
            )
            cases.append(
                Case(
                    "weights",
                    f"{name}{suffix} (prune)",
                    lambda c, f=fname, n=f"wp{i}{suffix}": _prune_argv(c, n, "--checkpoint", str(c / f)),
                )
            )
            cases.append(
                Case(
                    "weights",
                    f"{name}{suffix} (user model compile)",
                    lambda c, f=fname, n=f"wu{i}{suffix}": _user_argv(c, n, "--weights", str(c / f)),
                )
            )
    return cases


USER_MODEL = """
import torch
from torch import nn


class PointHeat(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, points):
        return {"heatmap": self.mlp(points).amax(dim=0, keepdim=True)}


def build():
    torch.manual_seed(0)
    return PointHeat()
"""


def _user_argv(corpus: Path, case: str, *extra: str, frames: str = "user/frames") -> list[str]:
    return [
        "compile",
        "--model",
        f"{corpus / 'user/toy.py'}:build",
        "--target",
        "cpu",
        "--out",
        _out(corpus, case),
        "--frames",
        str(corpus / frames),
        *extra,
    ]


def _frames_cases() -> list[Case]:
    good = {"points": np.random.default_rng(3).random((40, 4), dtype=np.float32)}

    def folder(*files: tuple[str, Callable[[Path], None]]) -> Callable[[Path], None]:
        def make(path: Path) -> None:
            path.mkdir()
            for name, write in files:
                write(path / name)

        return make

    def npz(**arrays):
        return lambda path: np.savez(path, **arrays)

    def truncated(path: Path) -> None:
        np.savez(path, **good)
        path.write_bytes(path.read_bytes()[:100])

    def objects(path: Path) -> None:
        np.savez(path, points=np.array([_Payload(path.parent.parent), 1], dtype=object))

    variants = {
        "empty folder": folder(),
        "only other files": folder(("a.txt", _raw(b"x")), ("b.npy", _raw(b"x"))),
        "truncated npz": folder(("000.npz", npz(**good)), ("001.npz", truncated)),
        "object arrays": folder(("000.npz", objects)),
        "empty npz file": folder(("000.npz", _raw(b""))),
        "random npz bytes": folder(("000.npz", _raw(np.random.default_rng(4).bytes(512)))),
        "argument missing": folder(("000.npz", npz(other=good["points"]))),
        "points wrong rank": folder(("000.npz", npz(points=np.zeros(40, np.float32)))),
        "points string": folder(("000.npz", npz(points=np.array(["a", "b"])))),
        "an npz that is a folder": folder(("000.npz", _folder)),
    }
    cases = []
    for i, (name, make) in enumerate(variants.items()):
        fname = _file(f"frames/{i:02d}", make)
        cases.append(Case("frames", name, lambda c, f=fname, n=f"fr{i}": _user_argv(c, n, frames=f)))
    fname = _file("frames/not-a-folder.npz", npz(**good))
    cases.append(Case("frames", "a file, not a folder", lambda c: _user_argv(c, "frfile", frames=fname)))
    return cases


def _non_finite_cases() -> list[Case]:
    cases = []
    for value in ("nan", "NaN", "inf", "-inf", "Infinity", "0", "-5", "1e999"):
        cases.append(
            Case(
                "non_finite",
                f"handoff --latency-budget-ms {value}",
                lambda c, v=value: [
                    "handoff",
                    str(c / "handoff-out"),
                    "--target",
                    "cpu",
                    "--latency-budget-ms=" + v,
                ],
                "--latency-budget-ms",
            )
        )
    for flag, value in (("--threshold", "nan"), ("--confidence", "nan"), ("--threshold", "inf")):
        cases.append(
            Case(
                "non_finite",
                f"regress {flag} {value}",
                lambda c, f=flag, v=value: [
                    "regress",
                    "--onnx",
                    str(c / "onnx/toy.onnx"),
                    "--baseline-onnx",
                    str(c / "onnx/toy.onnx"),
                    f,
                    v,
                    "--report-dir",
                    _out(c, f"rg{f}{v}"),
                ],
                flag,
            )
        )
    return cases


def _cheap_first_cases() -> list[Case]:
    """Refusals that used to come after the expensive part (measuring, pruning): each must come
    before it (test_cheap_checks_come_first times them)."""
    blocker = _file("cheap/a_file", _raw(b"not a folder"))
    folder = _file("cheap/a_folder", _folder)
    profile = ["profile", "--onnx", "{c}/onnx/toy.onnx", "--target", "cpu", "--inputs", "{c}/npz/good.npz"]
    variants = {
        "profile --out is a folder": [*profile, "--out", "{c}/" + folder],
        "profile --out under a file": [*profile, "--out", "{c}/" + blocker + "/p.json"],
        "profile --latency-table under a file": [
            *profile,
            "--out",
            "{o}/p.json",
            "--latency-table",
            "{c}/" + blocker + "/t.json",
        ],
        "profile --latency-table without --onnx": [
            "profile",
            "--target",
            "cpu",
            "--import-trtexec",
            "{c}/" + folder,
            "--out",
            "{o}/p.json",
            "--latency-table",
            "{o}/t.json",
        ],
        "prune --out is a file": [
            "prune",
            "--model",
            "bevfusion-tiny",
            "--synthetic",
            "--calib",
            "1",
            "--out",
            "{c}/" + blocker,
        ],
        "prune --out under a file": [
            "prune",
            "--model",
            "bevfusion-tiny",
            "--synthetic",
            "--calib",
            "1",
            "--out",
            "{c}/" + blocker + "/o",
        ],
        "handoff --sign-key not a key": [
            "handoff",
            "{c}/handoff-out",
            "--target",
            "cpu",
            "--sign-key",
            "{c}/" + blocker,
        ],
        "handoff --sign-key missing": [
            "handoff",
            "{c}/handoff-out",
            "--target",
            "cpu",
            "--sign-key",
            "{c}/no-key.pem",
        ],
        "handoff --sign-key a folder": [
            "handoff",
            "{c}/handoff-out",
            "--target",
            "cpu",
            "--sign-key",
            "{c}/" + folder,
        ],
        "eval --json under a file": ["eval", "--json", "{c}/" + blocker + "/r.json"],
        "eval --json a folder": ["eval", "--json", "{c}/" + folder],
    }
    return [
        Case("cheap_first", name, lambda c, a=argv, n=f"cf{i}": [x.format(c=c, o=_out(c, n)) for x in a])
        for i, (name, argv) in enumerate(variants.items())
    ]


CORPUS: list[Case] = [
    *_rig_cases(),
    *_toml_cases(),
    *_sparsity_cases(),
    *_points_cases(),
    *_build_points_cases(),
    *_onnx_cases(),
    *_npz_cases(),
    *_weights_cases(),
    *_frames_cases(),
    *_non_finite_cases(),
    *_cheap_first_cases(),
]
CORPUS_SIZES: dict[str, int] = {}
for _case in CORPUS:
    CORPUS_SIZES[_case.cls] = CORPUS_SIZES.get(_case.cls, 0) + 1


# ---------------------------------------------------------------------------------- running it
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("malformed")
    (root / "onnx").mkdir()
    onnx.save(conv_stack_model(), root / "onnx/toy.onnx")
    (root / "npz").mkdir()
    np.savez(root / "npz/good.npz", **toy_feeds(50))
    (root / "user/frames").mkdir(parents=True)
    (root / "user/toy.py").write_text(USER_MODEL)
    for i in range(3):
        np.savez(
            root / f"user/frames/{i:03d}.npz",
            points=np.random.default_rng(i).random((30 + i, 4), dtype=np.float32),
        )
    (root / "sparsity").mkdir()
    (root / "sparsity/table.json").write_text('{"layer": {"dense": 1.0}}')
    (root / "handoff-out").mkdir()
    for name, make in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            make(path)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file outside the OUT folders: size and mtime (a changed input file shows)."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and "outs" not in p.relative_to(root).parts[:1]
    }


def _files_in(folder: Path) -> list[str]:
    return sorted(p.as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_refused(code: int, err: str, needle: str = "") -> str:
    """Exit 2 and one ``error: ... (hint: ...)`` line, the last on stderr. A command that got as far as
    starting may have printed progress lines before it (e.g. compile's "torch threads: 1"), never a
    traceback or a warning."""
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], (code, err)
    line = lines[-1]
    assert line.startswith("error: ") and "(hint: " in line and line.endswith(")"), line
    assert needle.lower() in line.lower(), (needle, line)
    return line


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_malformed_input_is_one_line_and_touches_nothing(case: Case, corpus: Path, capsys) -> None:
    before = _snapshot(corpus)
    argv = case.argv(corpus)
    try:
        code = main(argv)
        captured = capsys.readouterr()
        assert_refused(code, captured.err, case.needle)
        assert not (corpus / MARKER).exists(), "a pickled payload was loaded"
        assert _snapshot(corpus) == before, "an input file was changed or a file was written outside OUT"
        assert _files_in(corpus / "outs") == [], "a refused run left files in OUT"
    finally:
        shutil.rmtree(corpus / "outs", ignore_errors=True)  # one failing case does not fail the next
        (corpus / MARKER).unlink(missing_ok=True)


def test_corpus_size_per_class(capsys) -> None:
    with capsys.disabled():
        print(
            "\nmalformed-input corpus:",
            ", ".join(f"{k} {v}" for k, v in CORPUS_SIZES.items()),
            f"(total {len(CORPUS)}; bundles: tests/compiler/test_bundle_malformed.py)",
        )
    assert len(CORPUS) >= 300
    assert set(CORPUS_SIZES) == {
        "rig",
        "target_toml",
        "sparsity",
        "points",
        "onnx",
        "inputs_npz",
        "weights",
        "frames",
        "non_finite",
        "cheap_first",
    }
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", [c for c in CORPUS if c.cls == "cheap_first"], ids=lambda c: c.name)
def test_cheap_checks_come_first(case: Case, corpus: Path, capsys) -> None:
    start = time.perf_counter()
    try:
        code = main(case.argv(corpus))
    finally:
        shutil.rmtree(corpus / "outs", ignore_errors=True)
    assert_refused(code, capsys.readouterr().err)
    assert time.perf_counter() - start < 5.0  # refused before measuring or pruning


# ---------------------------------------------------------------------------------- JSON artifacts
@pytest.mark.parametrize(
    ("obj", "where", "kind"),
    [
        ({"a": float("nan")}, "a", "nan"),
        ({"a": {"b": [1.0, float("inf")]}}, "a.b[1]", "inf"),
        ({"x": [{"y": -float("inf")}]}, "x[0].y", "-inf"),
        ({"arr": np.array([1.0, np.nan])}, "arr[1]", "nan"),
        ({"m": np.float32("nan"), "ok": 2.5}, "m", "nan"),
    ],
)
def test_write_json_writes_non_finite_numbers_as_null_with_their_paths(tmp_path, obj, where, kind) -> None:
    dest = tmp_path / "verify.json"
    write_json(dest, obj)
    text = dest.read_text()
    doc = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} literal in {text}"))
    assert doc["non_finite"] == {where: kind}
    node = doc
    for part in where.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    assert node is None
    assert [p.name for p in tmp_path.iterdir()] == ["verify.json"]  # no temp file left


def test_write_json_refuses_a_non_finite_document_that_is_not_an_object(tmp_path) -> None:
    with pytest.raises(SparsefuseError) as info:
        write_json(tmp_path / "x.json", [1.0, float("nan")])
    assert "at [1]" in info.value.message and info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_write_json_bytes_of_finite_documents_are_unchanged(tmp_path) -> None:
    doc = {"b": [1, 2.5, None], "a": {"c": "x"}}
    write_json(tmp_path / "d.json", doc)
    assert (tmp_path / "d.json").read_text() == json.dumps(doc, indent=2, sort_keys=True) + "\n"


def test_a_verify_report_with_nan_renders(tmp_path) -> None:
    """report.md reads verify.json back: a null max_abs (a NaN output) is shown, not a crash."""
    from sparsefuse.compiler.report import _number

    assert _number(None) == "not finite" and _number(0.5) == "0.5"


# ---------------------------------------------------------------------------------- subprocesses
REPO = Path(__file__).resolve().parents[2]


def _cli(*argv: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sparsefuse.compiler.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=kwargs.get("cwd", REPO),
    )


@pytest.mark.parametrize(
    "pick",
    [
        "rig:not UTF-8",
        "onnx:truncated to half (build cpu)",
        "inputs_npz:object array (pickle) (profile)",
        "sparsity:spec beta=nan",
        "weights:pickle.pth (prune)",
    ],
)
def test_some_cases_as_real_subprocesses(pick: str, corpus: Path) -> None:
    case = next(c for c in CORPUS if c.id == pick)
    before = _snapshot(corpus)
    proc = _cli(*case.argv(corpus))
    out, err = proc.communicate(timeout=120)
    assert_refused(proc.returncode, err, case.needle)
    assert _snapshot(corpus) == before and not (corpus / MARKER).exists()
    assert _files_in(corpus / "outs") == []


def _stray(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigterm_during_a_compile_is_like_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli(
        "compile", "--model", "bevfusion-tiny", "--target", "cpu", "--out", str(out), "--verify-frames", "1"
    )
    deadline = time.monotonic() + 120
    while not (out / "export").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the export stage has started: it makes OUT/export/ first
    assert proc.poll() is None, "the compile ended before the export stage started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: terminated by SIGTERM"), err
    assert not (out / "compile.json").exists()  # the compile's closing artifact is never partial
    assert not (out / "export" / "model.onnx").exists() or (out / ".cache" / "export.json").exists()
    assert _stray(out) == []


def _ctrl_c_raises() -> bool:
    """Whether a SIGINT sent to this process raises KeyboardInterrupt here: main thread, default
    handler, SIGINT not blocked (pytest-xdist workers differ)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    return signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_second_ctrl_c_during_cleanup_does_not_leave_the_temp_file(tmp_path: Path, monkeypatch) -> None:
    """The first Ctrl-C interrupts a write; a second one arrives while atomic_path removes its temp
    file. The removal still completes (signals are held), then the second Ctrl-C is delivered."""
    if not _ctrl_c_raises():
        pytest.skip("Ctrl-C does not raise in this thread (pytest-xdist worker)")
    from sparsefuse.atomic import atomic_path

    real_unlink = Path.unlink
    sent = []

    def unlink_with_a_second_ctrl_c(self: Path, missing_ok: bool = False) -> None:
        if not sent:
            sent.append(self)
            os.kill(os.getpid(), signal.SIGINT)  # without the held signals this raises right here
            time.sleep(0.05)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink_with_a_second_ctrl_c)
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "artifact.json") as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt  # the first Ctrl-C
    assert sent and list(tmp_path.iterdir()) == []


def test_signals_are_held_during_a_cleanup(tmp_path: Path) -> None:
    if not _ctrl_c_raises():
        pytest.skip("Ctrl-C does not raise in this thread (pytest-xdist worker)")
    from sparsefuse.atomic import signals_deferred

    seen = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            seen.append("cleanup finished")  # not interrupted
    assert seen == ["cleanup finished"]
