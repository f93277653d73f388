"""The within-layer pruning operator of a run: magnitude masking, or OBS reconstruction (obs.py).

A candidate's *changes* are name -> tensor: a boolean mask (True = kept; the weight is multiplied) or,
for a layer the OBS operator reconstructs, the new weight values (which already carry the zeros).
The sensitivity curves apply exactly these changes, so δ[i,k] is the distortion of the operator the
plan applies. Layers OBS does not support (grouped, transposed, 1-D/3-D dense convs) and layers that
did not run on the calibration frames keep magnitude masking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sparsefuse.passes.sparsity.candidates import DENSE, Candidate, candidate_masks
from sparsefuse.passes.sparsity.channel import ChannelChain, chain_masks
from sparsefuse.passes.sparsity.discover import PrunableLayer
from sparsefuse.passes.sparsity.hessian import collect_hessians
from sparsefuse.passes.sparsity.obs import DEFAULT_BLOCK, DEFAULT_PERCDAMP, ObsLayer
from sparsefuse.passes.sparsity.patterns import filter_mask


class ObsOperator:
    """Hessians of the model's supported layers (collected once on the calibration frames) and their
    cached inverse Cholesky factors; ``weight(layer, w, cand)`` reconstructs one layer."""

    def __init__(
        self,
        model: torch.nn.Module,
        frames: Sequence[Any],
        forward: Callable[[torch.nn.Module, Any], Any],
        layers: Sequence[PrunableLayer],
        percdamp: float = DEFAULT_PERCDAMP,
        block: int = DEFAULT_BLOCK,
    ) -> None:
        start = time.perf_counter()
        hessians = collect_hessians(model, frames, forward, layers)
        self.collect_seconds = time.perf_counter() - start
        self.block = block
        self.layers = {
            la.name: ObsLayer.build(la.shape, la.in_axis, hessians[la.name], percdamp)
            for la in layers
            if la.name in hessians
        }
        self.seconds = time.perf_counter() - start

    def supports(self, name: str) -> bool:
        return name in self.layers

    def weight(self, layer: PrunableLayer, weight: torch.Tensor, cand: Candidate) -> torch.Tensor:
        """The reconstructed weight of ``layer`` under ``cand`` (same shape and dtype as ``weight``)."""
        return self.layers[layer.name].prune(weight, cand.pattern, cand.level, self.block)

    def refit_consumer(self, name: str, weight: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """The consumer ``name`` with its removed input channels (``removed`` [Cin] bool) zeroed and the
        other inputs refit (exact group OBS). Its input is 0 on those channels once the producer's
        filters and their per-channel tensors are masked, so this only adds compensation."""
        return self.layers[name].remove_inputs(weight, removed)


def candidate_changes(
    layer: PrunableLayer,
    weights: Mapping[str, torch.Tensor],
    cand: Candidate,
    chain: ChannelChain | str | None,
    operator: ObsOperator | None = None,
) -> dict[str, torch.Tensor]:
    """Name -> bool mask or new float values that realize ``cand`` with the run's operator."""
    if operator is None or not operator.supports(layer.name) or cand.pattern == DENSE or cand.level == 0:
        return candidate_masks(layer, weights, cand, chain)
    new = operator.weight(layer, weights[layer.name], cand)
    if cand.pattern != "channel":
        return {layer.name: new}
    assert isinstance(chain, ChannelChain)
    # The removed filters are the zero rows of the new weight: filter_mask recovers them, as apply does.
    keep = filter_mask(new, layer.out_axis, cand.level)
    shapes = {chain.producer: tuple(new.shape), chain.consumer: tuple(weights[chain.consumer].shape)}
    out: dict[str, torch.Tensor] = dict(chain_masks(chain, keep, shapes))
    out[layer.name] = new
    if operator.supports(chain.consumer):
        out[chain.consumer] = operator.refit_consumer(chain.consumer, weights[chain.consumer], ~keep)
    return out


def reconstructed_weights(
    operator: ObsOperator,
    layers: Sequence[PrunableLayer],
    weights: Mapping[str, torch.Tensor],
    cands: Sequence[Candidate],
    chains: Mapping[str, ChannelChain | str] | None = None,
) -> dict[str, torch.Tensor]:
    """Name -> reconstructed weight of every layer whose chosen candidate OBS reconstructs, and of every
    consumer of a reconstructed channel decision. A consumer's own decision is applied first; its input
    refit then leaves its removed rows at zero (each row is refit on its own)."""
    out: dict[str, torch.Tensor] = {}
    chosen = [
        (layer, cand) for layer, cand in zip(layers, cands, strict=True)
        if operator.supports(layer.name) and cand.pattern != DENSE and cand.level > 0
    ]
    for layer, cand in chosen:
        out[layer.name] = operator.weight(layer, weights[layer.name], cand).detach().cpu().contiguous()
    for layer, cand in chosen:
        chain = (chains or {}).get(layer.name)
        if cand.pattern != "channel" or not isinstance(chain, ChannelChain):
            continue
        if operator.supports(chain.consumer):
            keep = filter_mask(out[layer.name], layer.out_axis, cand.level)
            current = out.get(chain.consumer, weights[chain.consumer])
            out[chain.consumer] = operator.refit_consumer(chain.consumer, current, ~keep).detach().cpu()
    return out
