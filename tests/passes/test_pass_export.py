"""Export round trip of the tiny preset: custom ops are single nodes in domain sparsefuse, the
point count is dynamic, initializers carry the torch parameter names and values, and ONNX
Runtime (after cleanup + lowering) matches PyTorch on a frame with a different point count."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from sparsefuse.models.bevfusion.lidar import SparseConv3d
from sparsefuse.models.frames import random_frame
from sparsefuse.models.presets import build_model, get_preset
from sparsefuse.passes.cleanup import cleanup
from sparsefuse.passes.export import INPUT_NAMES, OUTPUT_NAMES, POINTS_DIM, export_model, read_param_map
from sparsefuse.passes.lower import lower
from sparsefuse.passes.manager import Pass, PassContext, run_passes, run_producer
from sparsefuse.plugins.common import DOMAIN


@pytest.fixture(scope="module")
def tiny():
    preset = get_preset("bevfusion-tiny")
    model = build_model("bevfusion-tiny", seed=0).eval()
    frame = random_frame(preset, seed=0)
    proto, record = run_producer("export", lambda: export_model(model, frame), PassContext())
    return preset, model, frame, proto, record


def test_custom_ops_are_single_nodes_in_our_domain(tiny):
    _, model, _, proto, record = tiny
    custom = Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    num_sparse_convs = sum(isinstance(m, SparseConv3d) for m in model.modules())
    assert num_sparse_convs > 0
    assert custom == {"Voxelize": 1, "SparseConv3d": num_sparse_convs, "ScatterDense": 1, "BEVPool": 1}
    assert {(o.domain, o.version) for o in proto.opset_import} >= {(DOMAIN, 1)}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert len(proto.functions) == 0  # bodies are attached only when lowering for ORT
    assert record.nodes_after == len(proto.graph.node) and record.wall_s > 0


def test_inputs_outputs_and_dynamic_point_count(tiny):
    preset, _, _, proto, _ = tiny
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    images, points = (i.type.tensor_type.shape.dim for i in proto.graph.input)
    assert [d.dim_value for d in images] == [preset.num_cameras, 3, *preset.image_size]
    assert points[0].dim_param == POINTS_DIM and points[1].dim_value == 4


def test_param_map_links_every_parameter_to_an_initializer_with_its_values(tiny):
    _, model, _, proto, _ = tiny
    mapping = read_param_map(proto)
    params = dict(model.named_parameters())
    assert set(mapping) == set(params)
    inits = {init.name: init for init in proto.graph.initializer}
    for name, init_name in mapping.items():
        np.testing.assert_array_equal(numpy_helper.to_array(inits[init_name]), params[name].detach().numpy(),
                                      err_msg=name)


def test_cleanup_keeps_the_link_and_ort_matches_torch_on_a_new_point_count(tiny):
    preset, model, frame, proto, _ = tiny
    cleaned, _ = run_passes([Pass("cleanup", cleanup)], proto, PassContext())
    mapping = read_param_map(cleaned)
    assert mapping == read_param_map(proto)
    used = {name for node in cleaned.graph.node for name in node.input}
    assert set(mapping.values()) <= used  # every parameter is still read by a node
    assert Counter(n.op_type for n in cleaned.graph.node if n.domain == DOMAIN) == Counter(
        n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    lowered, _ = run_passes([Pass("lower", lower)], cleaned, PassContext(target_backend="onnxruntime"))

    num_points = int(frame["points"].shape[0]) // 2 + 7  # not the export-time count
    fresh = random_frame(preset, seed=123, num_points=num_points)
    with torch.inference_mode():
        ref = [t.numpy() for t in model(fresh["images"], fresh["points"])]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(lowered.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {k: fresh[k].numpy() for k in INPUT_NAMES})
    for name, a, b in zip(OUTPUT_NAMES, got, ref, strict=True):
        assert a.shape == b.shape, name
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)) + 1e-5, name

