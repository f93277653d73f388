"""Dynamo-export translation: ``torch.ops.sparsefuse.sparse_inverse_conv3d`` -> one
``sparsefuse::SparseInverseConv3d``."""

from __future__ import annotations

import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.onnx_helpers import custom_op
from sparsefuse.plugins.sparse_inverse_conv3d.reference import ACTIVATIONS, sparse_inverse_conv3d  # noqa: F401
from sparsefuse.plugins.sparse_inverse_conv3d.schema import SPEC, register_schema


def sparse_inverse_conv3d_onnx(
    features,
    coords,
    out_coords,
    weight,
    bias,
    spatial_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    activation: str,
):
    """Emit the node; ``bias`` None becomes an omitted optional input."""
    if activation not in ACTIVATIONS:
        raise SparsefuseError(f"sparse_inverse_conv3d: activation {activation!r} is not supported",
                              hint=f"use one of {ACTIVATIONS}")
    inputs = (features, coords, out_coords, weight) + (() if bias is None else (bias,))
    return custom_op(SPEC)(
        *inputs,
        spatial_shape=[int(v) for v in spatial_shape],
        kernel_size=[int(v) for v in kernel_size],
        stride=[int(v) for v in stride],
        padding=[int(v) for v in padding],
        dilation=[int(v) for v in dilation],
        activation=str(activation),
    )


def translation_table() -> dict:
    """``{torch op overload: translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    register_schema()
    return {torch.ops.sparsefuse.sparse_inverse_conv3d.default: sparse_inverse_conv3d_onnx}
