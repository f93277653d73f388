"""Candidates per layer: (pattern, level) pairs, their masks and their costs.

``level`` is the fraction removed: of the weights (unstructured, 2:4) or of the output filters
(channel). Level 0 is the dense layer. Keys are ``"<pattern>@<level>"`` (``"dense@0"``,
``"unstructured@0.35"``, ``"2:4@0.5"``, ``"channel@0.25"``); latency tables use the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.channel import ChannelChain, chain_masks
from sparsefuse.passes.sparsity.discover import PrunableLayer
from sparsefuse.passes.sparsity.patterns import filter_mask, nm_mask, unstructured_mask

DENSE = "dense"


@dataclass(frozen=True)
class Candidate:
    pattern: str
    level: float

    @property
    def key(self) -> str:
        return f"{DENSE}@0" if self.level == 0 else f"{self.pattern}@{round(self.level, 6):g}"


def level_grid(levels: int) -> list[float]:
    """``levels`` evenly spaced sparsity levels in [0, 1] (RD-Prune's grid; default 21 = 5 % steps)."""
    return [round(float(v), 6) for v in np.linspace(0.0, 1.0, levels)]


def candidates_for(
    layer: PrunableLayer,
    pattern: str,
    levels: int,
    nm_policy: str,
    chain: ChannelChain | str | None,
) -> list[Candidate]:
    """The candidate list of one layer; always starts with the dense candidate."""
    dense = Candidate(DENSE, 0.0)
    if pattern == "unstructured":
        return [dense] + [Candidate("unstructured", lv) for lv in level_grid(levels)[1:]]
    if pattern == "2:4":
        ok = layer.nm_recommended if nm_policy == "tensorrt" else layer.nm_valid
        return [dense, Candidate("2:4", 0.5)] if ok else [dense]
    if pattern == "channel":
        if not isinstance(chain, ChannelChain):
            return [dense]
        filters = layer.shape[layer.out_axis]
        removed = sorted({min(int(round(lv * filters)), filters - 1) for lv in level_grid(levels)} - {0})
        return [dense] + [Candidate("channel", round(r / filters, 6)) for r in removed]
    raise ValueError(pattern)


def candidate_masks(
    layer: PrunableLayer,
    weights: Mapping[str, torch.Tensor],
    cand: Candidate,
    chain: ChannelChain | str | None,
) -> dict[str, torch.Tensor]:
    """Masks (True = kept) that realize ``cand`` on ``layer``; channel candidates also mask the
    consumer's input channels, which is what removing the filters does to the function."""
    w = weights[layer.name]
    if cand.pattern == DENSE or cand.level == 0:
        return {}
    if cand.pattern == "unstructured":
        return {layer.name: unstructured_mask(w, cand.level)}
    if cand.pattern == "2:4":
        return {layer.name: nm_mask(w, layer.in_axis)}
    if cand.pattern == "channel":
        assert isinstance(chain, ChannelChain)
        keep = filter_mask(w, layer.out_axis, cand.level)
        shapes = {chain.producer: tuple(w.shape), chain.consumer: tuple(weights[chain.consumer].shape)}
        return chain_masks(chain, keep, shapes)
    raise ValueError(cand.pattern)


def kept_params(layer: PrunableLayer, cand: Candidate) -> int:
    """Weights of this layer that survive ``cand`` (the consumer's share is not counted here)."""
    if cand.level == 0:
        return layer.params
    if cand.pattern == "channel":
        filters = layer.shape[layer.out_axis]
        return layer.params // filters * (filters - int(round(cand.level * filters)))
    if cand.pattern == "2:4":
        return layer.params // 2
    return layer.params - int(round(cand.level * layer.params))


def candidate_cost(
    layer: PrunableLayer,
    cand: Candidate,
    kind: str,
    latency: Mapping[str, Mapping[str, float]] | None = None,
) -> float:
    """Cost of ``cand``: kept params, kept FLOPs (dense FLOPs × kept fraction) or table latency (ms)."""
    if kind == "params":
        return float(kept_params(layer, cand))
    if kind == "flops":
        return layer.flops * kept_params(layer, cand) / layer.params
    if kind == "latency":
        assert latency is not None
        row = latency.get(layer.name)
        if row is None or cand.key not in row:
            raise SparsefuseError(
                f"latency table has no entry for layer {layer.name!r}, candidate {cand.key!r}",
                "profile every (layer, candidate) key or drop the layer from the table",
            )
        return float(row[cand.key])
    raise ValueError(kind)
