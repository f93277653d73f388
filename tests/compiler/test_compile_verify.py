"""Verify's comparison rule (docs/tolerances.md) and its polygraphy plumbing, on a toy model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from sparsefuse.compiler.verify import FP32, Tolerance, check_output, polygraphy_command, verify


@settings(max_examples=60, deadline=None)
@given(
    ref=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=20),
    shift_index=st.integers(0, 19),
    shift=st.floats(-1.0, 1.0),
)
def test_float_rule_is_max_abs_within_scaled_bound(ref, shift_index, shift):
    ref_arr = np.asarray(ref, dtype=np.float32)
    got = ref_arr.copy()
    got[shift_index % got.size] += np.float32(shift)
    check = check_output("y", got, ref_arr, FP32)
    max_abs = float(np.max(np.abs(got.astype(np.float64) - ref_arr.astype(np.float64))))
    bound = 1e-4 * float(np.max(np.abs(ref_arr))) + 1e-5
    assert check.max_abs == pytest.approx(max_abs)
    assert check.tolerance == pytest.approx(bound)
    assert check.passed == (max_abs <= bound)


def test_integers_must_be_exact():
    ref = np.array([[0, 1, 2, 3]], dtype=np.int32)
    assert check_output("coords", ref.copy(), ref).passed
    off = ref.copy()
    off[0, 2] += 1
    check = check_output("coords", off, ref)
    assert not check.passed and check.tolerance == 0.0 and check.max_abs == 1.0


def test_shape_mismatch_and_nan_fail():
    ref = np.ones((2, 3), np.float32)
    assert not check_output("y", np.ones((3, 2), np.float32), ref).passed
    assert not check_output("y", np.full((2, 3), np.nan, np.float32), ref).passed


def test_fp16_tolerance_is_looser():
    ref = np.array([100.0], np.float32)
    got = ref + 0.5
    assert not check_output("y", got, ref, FP32).passed
    assert check_output("y", got, ref, Tolerance(1e-2, 1e-3)).passed


def _sum_model(path):
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["points", "axis"], ["total"], keepdims=0)], "g",
        [helper.make_tensor_value_info("points", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [4])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


@pytest.mark.parametrize(("bias", "expect"), [(0.0, True), (1e-2, False)])
def test_verify_runs_polygraphy_and_writes_loadable_json(tmp_path, bias, expect):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    _sum_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    frames = [{"points": rng.random((n, 4), dtype=np.float32)} for n in (5, 9, 13)]
    report = verify(lambda: ort.InferenceSession(str(tmp_path / "m.onnx")),
                    lambda f: {"total": f["points"].astype(np.float64).sum(0).astype(np.float32) + bias},
                    frames, [{"seed": i} for i in range(3)], tmp_path, "m.onnx")
    assert report.passed is expect and report.polygraphy_passed is expect
    assert [f["pass"] for f in report.frames] == [expect] * 3
    loaded_inputs = load_json(tmp_path / "verify/inputs.json")
    assert [x["points"].shape[0] for x in loaded_inputs] == [5, 9, 13]
    golden = RunResults.load(str(tmp_path / "verify/golden.json"))
    assert list(golden.keys()) == ["torch"] and len(golden["torch"]) == 3
    doc = report.to_dict()
    assert doc["schema_version"] == 1 and doc["pass"] is expect
    json.dumps(doc)  # JSON-able as is


def test_polygraphy_command_uses_the_strictest_bound_per_output():
    command = polygraphy_command("lowered/cpu.onnx", {"heatmap": 2e-4, "boxes": 3e-4})
    assert command.startswith("polygraphy run lowered/cpu.onnx --onnxrt --load-inputs verify/inputs.json")
    assert "--load-outputs verify/golden.json" in command and "--rtol 0" in command
    assert command.endswith("--atol boxes:0.000299997 heatmap:0.000199998")
