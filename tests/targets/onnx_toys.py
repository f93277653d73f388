"""Small ONNX models for the targets tests (no dependency on the real model)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_stack_model(
    channels: tuple[int, ...] = (3, 8, 16), size: int = 16, seed: int = 0
) -> onnx.ModelProto:
    """images[1,C0,size,size] -> Conv/Relu per module -> a local function "sparsefuse::Scale"
    (named like a BEV-pool call) -> a head Conv. Node names carry torch-style module paths."""
    rng = np.random.default_rng(seed)
    scale_fn = helper.make_function(
        "sparsefuse",
        "Scale",
        ["x"],
        ["y"],
        [
            helper.make_node(
                "Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [2.0])
            ),
            helper.make_node("Mul", ["x", "c"], ["y"]),
        ],
        [helper.make_opsetid("", 18)],
    )
    nodes, inits, prev = [], [], "images"
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        w = f"camera.backbone.conv{i}.weight"
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), w))
        nodes.append(
            helper.make_node(
                "Conv", [prev, w], [f"c{i}"], name=f"/camera/backbone/conv{i}/Conv", pads=[1, 1, 1, 1]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"/camera/backbone/relu{i}/Relu"))
        prev = f"r{i}"
    nodes.append(
        helper.make_node(
            "Scale", [prev], ["pooled"], domain="sparsefuse", name="/camera/bev_pool/BEVPoolCall"
        )
    )
    inits.append(
        numpy_helper.from_array(
            rng.standard_normal((4, channels[-1], 1, 1)).astype(np.float32), "head.conv.weight"
        )
    )
    nodes.append(
        helper.make_node("Conv", ["pooled", "head.conv.weight"], ["heatmap"], name="/head/conv/Conv")
    )
    nodes.append(
        helper.make_node("ReduceSum", ["points"], ["points_sum"], name="/lidar/sum/ReduceSum", keepdims=0)
    )
    graph = helper.make_graph(
        nodes,
        "toy",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, channels[0], size, size]),
            helper.make_tensor_value_info("points", TensorProto.FLOAT, ["num_points", 4]),
        ],
        [
            helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [1, 4, size, size]),
            helper.make_tensor_value_info("points_sum", TensorProto.FLOAT, []),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("sparsefuse", 1)],
        functions=[scale_fn],
        ir_version=10,
    )
    onnx.checker.check_model(model)
    return model


def toy_feeds(num_points: int, channels: int = 3, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.random((1, channels, size, size), dtype=np.float32),
        "points": rng.random((num_points, 4), dtype=np.float32),
    }
