"""bevfusion-base (the BEVFusion paper's workload) exports to ONNX: no run, structure only."""

from __future__ import annotations

from collections import Counter

from sparsefuse.models.bevfusion.lidar import SparseConv3d
from sparsefuse.models.frames import random_frame
from sparsefuse.models.presets import build_model, get_preset
from sparsefuse.passes.export import POINTS_DIM, export_model, read_param_map
from sparsefuse.passes.manager import PassContext, run_producer
from sparsefuse.plugins.common import DOMAIN


def test_base_preset_exports_with_single_custom_nodes_and_full_param_map():
    preset = get_preset("bevfusion-base")
    model = build_model("bevfusion-base", seed=0).eval()
    frame = random_frame(preset, seed=0, num_points=20_000)  # export traces with fake tensors only
    proto, record = run_producer("export", lambda: export_model(model, frame), PassContext())
    custom = Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)
    num_sparse_convs = sum(isinstance(m, SparseConv3d) for m in model.modules())
    assert custom == {"Voxelize": 1, "SparseConv3d": num_sparse_convs, "ScatterDense": 1, "BEVPool": 1}
    images, points = (i.type.tensor_type.shape.dim for i in proto.graph.input)
    assert [d.dim_value for d in images] == [6, 3, 256, 704]
    assert points[0].dim_param == POINTS_DIM
    assert set(read_param_map(proto)) == {name for name, _ in model.named_parameters()}
    assert record.nodes_after == len(proto.graph.node)
