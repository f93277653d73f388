"""Dynamo-export translation: ``torch.ops.sparsefuse.scatter_dense`` -> one ``sparsefuse::ScatterDense``."""

from __future__ import annotations

import torch

from sparsefuse.plugins.onnx_helpers import custom_op
from sparsefuse.plugins.scatter_dense.reference import scatter_dense  # noqa: F401  (registers the torch op)
from sparsefuse.plugins.scatter_dense.schema import SPEC, register_schema


def scatter_dense_onnx(features, coords, spatial_shape: list[int], batch_size: int):
    """Emit the node."""
    return custom_op(SPEC)(
        features, coords, spatial_shape=[int(v) for v in spatial_shape], batch_size=int(batch_size)
    )


def translation_table() -> dict:
    """``{torch op overload: translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    register_schema()
    return {torch.ops.sparsefuse.scatter_dense.default: scatter_dense_onnx}
