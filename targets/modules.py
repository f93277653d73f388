"""Which BEVFusion module a graph node belongs to, as in CUDA-BEVFusion's timers.

CUDA-BEVFusion prints Lidar Backbone, Camera Depth, Camera Backbone, Camera Bevpool, VTransform,
Transfusion and Head timers (docs/sources.md S8). We report the same split under the names
below (plus "vtransform" for the post-pool camera downsample). The mapping is a data table: first
the custom op type decides, then the first pattern that matches the node's torch module path
(the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, e.g. "camera/camera.backbone/...",
or the node name itself, e.g. "/camera/backbone/conv1/Conv"); anything else is "other".
"""

from __future__ import annotations

import ast
import re
from typing import Any

MODULES: tuple[str, ...] = (
    "voxelize",
    "lidar_backbone",
    "camera_backbone",
    "camera_depth",
    "bev_pool",
    "vtransform",
    "fuser",
    "bev_encoder",
    "heads",
    "other",
)

# Custom op type -> module. These nodes carry the op type even after inlining into ORT kernels
# (ORT prefixes inlined nodes with the calling node's name, which the name table also catches).
OP_TYPE_MODULES: dict[str, str] = {
    "Voxelize": "voxelize",
    "SparseConv3d": "lidar_backbone",
    "SparseInverseConv3d": "lidar_backbone",
    "ScatterDense": "lidar_backbone",
    "BEVPool": "bev_pool",
}

# (regex over the normalized node name, module). Order matters: the first match wins, so the
# specific patterns (depth, pool) come before the generic modality prefixes.
NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"voxeliz", "voxelize"),
    (r"bev\.?pool", "bev_pool"),
    (r"scatter\.?dense", "lidar_backbone"),
    (r"sparse\.?conv", "lidar_backbone"),
    (r"(^|\.)camera\.(\w+\.)*(depth|dtransform|lss)", "camera_depth"),
    (r"(^|\.)(depth\.?net|dtransform)(\.|$)", "camera_depth"),
    # The post-pool camera BEV downsample (CUDA-BEVFusion's "VTransform" timer).
    (r"(^|\.)camera\.(\w+\.)*(bev|vtransform|view\.?transform|downsample)(\.|$)", "vtransform"),
    (r"(^|\.)(vtransform|view\.?transform)(\.|$)", "vtransform"),
    (r"(^|\.)(camera|img|image)(\.|$)", "camera_backbone"),
    (r"(^|\.)(lidar|pts|points|sparse\.?encoder|voxel\.?encoder)(\.|$)", "lidar_backbone"),
    # The BEV encoder after the fuser (SECOND decoder + neck in BEVFusion).
    (r"(^|\.)(fusion\.encoder|decoder|bev\.?encoder|bev\.?backbone|bev\.?neck)(\.|$)", "bev_encoder"),
    (r"(^|\.)(fuser|fusion|fuse)(\.|$)", "fuser"),
    (r"(^|\.)(heads?|seg\.?head|det\.?head|bbox\.?head|box\.?head|heatmap)(\.|$)", "heads"),
)
_COMPILED = tuple((re.compile(p), m) for p, m in NAME_PATTERNS)


def normalize_node_name(name: str) -> str:
    """ "/camera/backbone/conv1/Conv" and "node_camera_backbone_conv1" -> dotted lower case.

    Separators "/", ":" and "_" all become "." so that one pattern serves both exporters; compound
    words in NAME_PATTERNS therefore accept an optional "." (``bev\\.?pool``).
    """
    text = name.lower().replace("/", ".").replace(":", ".").replace("_", ".")
    text = re.sub(r"^(node|inlfunc|\.)+\.?", "", text)
    return re.sub(r"\.+", ".", text).strip(".")


def node_scopes(model: Any) -> dict[str, str]:
    """Node name -> torch module path ("camera/camera.backbone/...") from the exporter's
    ``pkg.torch.onnx.name_scopes`` metadata (dynamo export names nodes "node_conv2d_15", so the
    path lives only there). Nodes without the metadata are left out."""
    scopes: dict[str, str] = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    parts = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    break
                scopes[node.name] = "/".join(str(p) for p in parts[:-1] if p)
                break
    return scopes


def module_of(name: str, op_type: str = "") -> str:
    """The module a node belongs to ("other" when nothing matches)."""
    if op_type in OP_TYPE_MODULES:
        return OP_TYPE_MODULES[op_type]
    text = normalize_node_name(name)
    for pattern, module in _COMPILED:
        if pattern.search(text):
            return module
    return "other"
