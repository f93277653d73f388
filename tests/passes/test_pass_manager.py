"""The pass runner: timing, validation, records."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from sparsefuse.passes.manager import Pass, PassContext, PassValidationError, run_pass, run_passes, validate


def _model(num_relu: int = 2) -> onnx.ModelProto:
    nodes, prev = [], "x"
    for i in range(num_relu):
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _drop_last_relu(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    last = out.graph.node[-1]
    out.graph.output[0].name = last.input[0]
    out.graph.node.remove(last)
    ctx.log("dropped one relu")
    return out


def _break_graph(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node[0].input[0] = "undefined_tensor"
    return out


def test_run_pass_records_sizes_time_and_logs():
    lines: list[str] = []
    out, record = run_pass(Pass("drop", _drop_last_relu), _model(3), PassContext(log=lines.append))
    assert (record.name, record.nodes_before, record.nodes_after) == ("drop", 3, 2)
    assert record.wall_s >= 0.0 and len(out.graph.node) == 2
    assert any("dropped one relu" in line for line in lines)
    assert any(line.startswith("pass drop: 3 -> 2 nodes") for line in lines)


def test_run_passes_chains_in_order():
    passes = [Pass("a", _drop_last_relu), Pass("b", _drop_last_relu)]
    out, records = run_passes(passes, _model(3), PassContext())
    assert [r.name for r in records] == ["a", "b"]
    assert [(r.nodes_before, r.nodes_after) for r in records] == [(3, 2), (2, 1)]
    assert len(out.graph.node) == 1


def test_invalid_output_is_caught_and_names_the_pass():
    with pytest.raises(PassValidationError, match="pass 'breaker' produced an invalid graph"):
        run_pass(Pass("breaker", _break_graph), _model(), PassContext())


def test_non_model_return_is_a_type_error():
    with pytest.raises(TypeError, match="returned NoneType"):
        run_pass(Pass("nothing", lambda m, c: None), _model(), PassContext())  # type: ignore[arg-type,return-value]


def test_validate_rejects_type_errors_in_full_check():
    model = _model(1)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64  # Relu(float) declared int64
    with pytest.raises(PassValidationError):
        validate(model, full_check=True)
