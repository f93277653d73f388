"""Dynamo-export translation: ``torch.ops.sparsefuse.bev_pool`` -> one ``sparsefuse::BEVPool`` node."""

from __future__ import annotations

import torch

from sparsefuse.plugins.bev_pool.reference import bev_pool  # noqa: F401  (registers the torch op)
from sparsefuse.plugins.bev_pool.schema import SPEC, register_schema
from sparsefuse.plugins.onnx_helpers import custom_op


def bev_pool_onnx(
    depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, bev_shape: list[int]
):
    """Emit the node."""
    return custom_op(SPEC)(
        depth,
        feat,
        ranks_depth,
        ranks_feat,
        ranks_bev,
        interval_starts,
        interval_lengths,
        bev_shape=[int(v) for v in bev_shape],
    )


def translation_table() -> dict:
    """``{torch op overload: translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    register_schema()
    return {torch.ops.sparsefuse.bev_pool.default: bev_pool_onnx}
