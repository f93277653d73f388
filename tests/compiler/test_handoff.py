"""`sparsefuse handoff` and `sparsefuse verify` end to end on a small fixture compile directory.

The fixture's graph has one real custom node (ScatterDense, domain sparsefuse) followed by Relu;
its golden outputs come from a numpy oracle of ScatterDense, stored the way the compile's verify
stage stores the torch reference (polygraphy JSON).
"""

from __future__ import annotations

import base64
import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from signing_keys import keypair

from sparsefuse.compiler import bundle
from sparsefuse.compiler.cli import main

TARGET = "jetson/agx-orin-64gb"
SHAPE = (2, 4, 5)  # (Z, Y, X)
CHANNELS = 3


def scatter_dense_model() -> onnx.ModelProto:
    node = helper.make_node(
        "ScatterDense",
        ["features", "coords"],
        ["dense"],
        domain="sparsefuse",
        name="/lidar/scatter/ScatterDense",
        spatial_shape=list(SHAPE),
        batch_size=1,
    )
    relu = helper.make_node("Relu", ["dense"], ["bev"], name="/head/relu/Relu")
    graph = helper.make_graph(
        [node, relu],
        "fixture",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", CHANNELS]),
            helper.make_tensor_value_info("coords", TensorProto.INT32, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info(
                "bev", TensorProto.FLOAT, [1, CHANNELS * SHAPE[0], SHAPE[1], SHAPE[2]]
            )
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("sparsefuse", 1)]
    )
    model.ir_version = 10
    return model


def oracle(features: np.ndarray, coords: np.ndarray) -> np.ndarray:
    z_size, y_size, x_size = SHAPE
    dense = np.zeros((1, CHANNELS, z_size, y_size, x_size), np.float32)
    for f, (b, z, y, x) in zip(features, coords, strict=True):
        dense[b, :, z, y, x] = f
    return np.maximum(dense.reshape(1, CHANNELS * z_size, y_size, x_size), 0.0)


def frame(seed: int, n: int) -> OrderedDict:
    rng = np.random.default_rng(seed)
    cells = rng.choice(np.prod(SHAPE), size=n, replace=False)
    z, rest = np.divmod(cells, SHAPE[1] * SHAPE[2])
    y, x = np.divmod(rest, SHAPE[2])
    coords = np.stack([np.zeros_like(z), z, y, x], axis=1).astype(np.int32)
    return OrderedDict(features=rng.standard_normal((n, CHANNELS)).astype(np.float32), coords=coords)


def poly_array(a: np.ndarray) -> dict:
    """polygraphy's JSON encoding of an ndarray (as compile's verify stage writes it)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}


def make_out(root: Path, golden_scale: float = 1.0) -> Path:
    (root / "passes").mkdir(parents=True)
    onnx.save(scatter_dense_model(), str(root / "passes" / "model.onnx"))
    (root / "compile.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "config": {"model": "fixture", "target": "cpu", "seed": 0},
                "versions": {"onnx": onnx.__version__},
                "inputs": {"rig": "builtin"},
            }
        )
    )
    feeds = [frame(1, 7), frame(2, 11)]
    iterations = [
        {
            "outputs": {"bev": {"values": poly_array(oracle(f["features"], f["coords"]) * golden_scale)}},
            "runner_name": "torch",
        }
        for f in feeds
    ]
    (root / "verify").mkdir()
    (root / "verify" / "inputs.json").write_text(
        json.dumps([{k: poly_array(v) for k, v in f.items()} for f in feeds])
    )
    (root / "verify" / "golden.json").write_text(
        json.dumps({"lst": [["torch", iterations]], "polygraphy_class": "RunResults"})
    )
    (root / "profile.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "label": "estimated",
                "target": TARGET,
                "backend": "tensorrt",
                "cost_model": {"name": "roofline", "version": "1"},
                "latency_ms": {"total": 12.5},
            }
        )
    )
    (root / "sparsity").mkdir()
    (root / "sparsity" / "plan.json").write_text(json.dumps({"schema_version": 1, "layers": []}))
    return root


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return make_out(tmp_path_factory.mktemp("out") / "OUT")



def handoff(out: Path, dest: Path, *extra: str) -> int:
    return main(["handoff", str(out), "--target", TARGET, "--out", str(dest), *extra])


def test_bundle_for_orin_verifies_and_runs_on_cpu(out_dir, tmp_path, capsys):
    dest = tmp_path / "bundle"
    assert handoff(out_dir, dest, "--latency-budget-ms", "40") == 0
    manifest = bundle.read_manifest(dest)
    files = manifest["files"]
    assert manifest["target"] == TARGET and manifest["target_info"]["tensorrt"] == "10.3"
    for rel in (
        "lowered/jetson_agx-orin-64gb.onnx",
        "engine/jetson_agx-orin-64gb/build_engine.sh",
        "engine/jetson_agx-orin-64gb/profile_engine.sh",
        "golden/inputs_0.npz",
        "golden/outputs_1.npz",
        "golden/tolerances.json",
        "sparsity/plan.json",
        "latency/budget.json",
        "latency/profile.json",
        "compile.json",
        "README.md",
        "native/plugins/scatter_dense/kernels.cu",
    ):
        assert rel in files, rel
    # TensorRT lowering: the custom node stays, with no function body (the plugin implements it).
    model = onnx.load(str(dest / manifest["model"]))
    assert [n.op_type for n in model.graph.node if n.domain == "sparsefuse"] == ["ScatterDense"]
    assert len(model.functions) == 0
    assert json.loads((dest / "latency" / "profile.json").read_text())["label"] == "estimated"
    readme = (dest / "README.md").read_text()
    assert "--allow-unverified-signature" in readme and "Only a signed bundle" in readme
    assert "DESIGN.md" not in readme  # the integrator has only the bundle
    assert json.loads((dest / "latency" / "budget.json").read_text())["budget_ms"] == 40.0
    with np.load(dest / "golden" / "outputs_1.npz") as data:
        with np.load(dest / "golden" / "inputs_1.npz") as inputs:
            np.testing.assert_array_equal(data["bev"], oracle(inputs["features"], inputs["coords"]))
    capsys.readouterr()
    assert main(["verify", str(dest), "--run"]) == 0
    assert main(["verify", str(dest.with_name("bundle.tar.gz")), "--run"]) == 0
    out = capsys.readouterr().out
    assert (
        "jetson_agx-orin-64gb.onnx frame 1 bev" in out
        and "verify: PASS" in out
        and "TensorRT not found here" in out
    )


def test_two_builds_differ_only_in_the_timestamp(out_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.chdir(tmp_path)
    assert handoff(out_dir, Path("a")) == 0  # a relative --out works too
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    assert handoff(out_dir, tmp_path / "b") == 0
    ma, mb = bundle.read_manifest(tmp_path / "a"), bundle.read_manifest(tmp_path / "b")
    assert ma["created_utc"] != mb["created_utc"]
    assert {k: v for k, v in ma.items() if k != "created_utc"} == {
        k: v for k, v in mb.items() if k != "created_utc"
    }
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert handoff(out_dir, tmp_path / "c") == 0
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "c.tar.gz").read_bytes()


@pytest.mark.parametrize("tamper", ["modify", "remove", "add"])
def test_tampered_bundle_fails_naming_the_file(out_dir, tmp_path, capsys, tamper):
    dest = tmp_path / "bundle"
    assert handoff(out_dir, dest) == 0
    target = dest / "golden" / "outputs_0.npz"
    if tamper == "modify":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif tamper == "remove":
        target.unlink()
    else:
        (dest / "golden" / "outputs_9.npz").write_bytes(b"x")
    capsys.readouterr()
    assert main(["verify", str(dest)]) == 1
    out, err = capsys.readouterr()
    expected = {
        "modify": "modified: golden/outputs_0.npz",
        "remove": "missing: golden/outputs_0.npz",
        "add": "extra: golden/outputs_9.npz",
    }[tamper]
    assert expected in err and "verify: FAIL" in out and len(err.splitlines()) == 1


def test_signed_bundle_checks_the_key(out_dir, tmp_path, capsys):
    priv, pub = keypair(tmp_path, "signer")
    _, other = keypair(tmp_path, "other")
    dest = tmp_path / "bundle"
    assert handoff(out_dir, dest, "--sign-key", str(priv)) == 0
    assert (dest / bundle.SIGNATURE).is_file()
    assert main(["verify", str(dest.with_name("bundle.tar.gz")), "--public-key", str(pub)]) == 0
    assert main(["verify", str(dest), "--public-key", str(other)]) == 1
    assert "signature check failed" in capsys.readouterr().err


def test_outputs_out_of_tolerance_fail_the_run(tmp_path, capsys):
    out = make_out(tmp_path / "OUT", golden_scale=1.01)  # 1% off: far beyond 1e-4*max|ref| + 1e-5
    dest = tmp_path / "bundle"
    assert handoff(out, dest) == 0
    assert main(["verify", str(dest)]) == 0  # integrity alone passes
    capsys.readouterr()
    assert main(["verify", str(dest), "--run"]) == 1
    assert "frame 0 output bev: exceeds tolerance" in capsys.readouterr().err


def test_handoff_errors_are_clear_and_leave_nothing_behind(out_dir, tmp_path, capsys):
    assert main(["handoff", str(tmp_path), "--target", TARGET, "--out", str(tmp_path / "b")]) == 2
    assert "not a compile directory" in capsys.readouterr().err
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("not a key")
    assert handoff(out_dir, tmp_path / "b", "--sign-key", str(bad_key)) == 2
    assert "not a PEM private key" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pem"]  # no bundle, no partial folder
    assert handoff(out_dir, tmp_path / "b") == 0
    assert handoff(out_dir, tmp_path / "b") == 0  # an earlier bundle is replaced
    assert main(["verify", str(tmp_path / "nope")]) == 2
    stale = make_out(tmp_path / "STALE")
    for name in ("inputs.json", "golden.json"):
        (stale / "verify" / name).unlink()
    assert handoff(stale, tmp_path / "stale_bundle") == 2  # golden frames would come from other code
    assert "sources changed since it was compiled" in capsys.readouterr().err
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("mine")
    assert handoff(out_dir, precious) == 2
    assert "is not a sparsefuse bundle" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "mine"


def test_a_profile_for_another_target_is_not_the_bundles_latency_claim(tmp_path):
    """A CPU compile handed off to a Jetson: the x86 measurement ships only when passed explicitly,
    and then labelled with the target it was measured on."""
    import json

    import numpy as np
    import torch

    import sparsefuse
    from sparsefuse.compiler.cli import main

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    frames = [{"input": np.random.default_rng(i).random((3, 4), dtype=np.float32)} for i in range(3)]

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, input):  # noqa: A002
            return self.net(input)

    out = tmp_path / "out"
    assert sparsefuse.compile(Wrapped(), frames, target="cpu", out=out, verify_frames=1).verify_passed
    assert main(["handoff", str(out), "--target", "jetson/agx-orin-64gb"]) == 0
    bundle = out / "handoff" / "jetson_agx-orin-64gb"
    budget = json.loads((bundle / "latency" / "budget.json").read_text())
    assert not (bundle / "latency" / "profile.json").exists()
    assert budget["last_profile_label"] is None and "`cpu`" in budget["profile_note"]
    assert "No latency claim ships" in (bundle / "README.md").read_text()
    profile = str(out / "profile.json")
    assert main(["handoff", str(out), "--target", "jetson/agx-orin-64gb", "--profile", profile,
                 "--out", str(tmp_path / "b2")]) == 0
    readme = (tmp_path / "b2" / "README.md").read_text()
    assert (tmp_path / "b2" / "latency" / "profile.json").is_file()
    assert "labelled `measured` **on target `cpu`, not on this one**" in readme
    assert main(["handoff", str(out), "--target", "cpu"]) == 0  # its own target: shipped as before
    assert (out / "handoff" / "cpu" / "latency" / "profile.json").is_file()
    # A user target TOML: the default bundle folder goes by the TOML's tag, not by its path.
    from pathlib import Path

    registry = Path(__file__).resolve().parents[2] / "targets" / "registry"
    toml = (registry / "jetson-agx-orin-64gb.toml").read_text()
    user_toml = tmp_path / "lab.toml"
    user_toml.write_text(toml.replace('tag = "jetson/agx-orin-64gb"', 'tag = "lab/orin-bench"'))
    assert main(["handoff", str(out), "--target", str(user_toml)]) == 0
    assert (out / "handoff" / "lab_orin-bench" / "manifest.json").is_file()


def test_an_obs_plan_ships_its_reconstructed_weights(tmp_path):
    import numpy as np
    import torch

    import sparsefuse
    from sparsefuse.compiler.cli import main

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, points):
            return self.net(points).amax(0, keepdim=True)

    frames = [{"points": np.random.default_rng(i).random((12 + i, 8), dtype=np.float32)} for i in range(4)]
    out = tmp_path / "out"
    result = sparsefuse.compile(Head(), frames, target="cpu", out=out, verify_frames=1,
                                sparsity="budget=params=0.5,allocator=rdprune,operator=obs,calib=3,levels=3")
    assert result.verify_passed and (out / "sparsity" / "weights.safetensors").is_file()
    assert main(["handoff", str(out), "--target", "cpu"]) == 0
    shipped = out / "handoff" / "cpu" / "sparsity" / "weights.safetensors"
    assert shipped.read_bytes() == (out / "sparsity" / "weights.safetensors").read_bytes()
    assert main(["verify", str(out / "handoff" / "cpu"), "--run"]) == 0
