"""The within-layer pruning operator of a run: magnitude masking, or OBS reconstruction (obs.py).

A candidate's *changes* are name -> tensor: a boolean mask (True = kept; the weight is multiplied) or,
for a layer the OBS operator reconstructs, the new weight values (which already carry the zeros).
The sensitivity curves apply exactly these changes, so δ[i,k] is the distortion of the operator the
plan applies. Layers OBS does not support (grouped, transposed, 1-D/3-D dense convs) and layers that
did not run on the calibration frames keep magnitude masking; so do channel decisions whose consumer
has no Hessian.
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
from sparsefuse.passes.sparsity.patterns import expand_axis_mask


class ObsOperator:
    """Hessians of the model's supported layers (collected once on the calibration frames), their
    cached inverse Cholesky factors, and per channel chain the cached greedy removal order;
    ``weight(layer, w, cand)`` reconstructs one layer, ``channel_keep`` chooses a chain's filters."""

    def __init__(
        self,
        model: torch.nn.Module,
        frames: Sequence[Any],
        forward: Callable[[torch.nn.Module, Any], Any],
        layers: Sequence[PrunableLayer],
        percdamp: float = DEFAULT_PERCDAMP,
        block: int = DEFAULT_BLOCK,
        chains: Mapping[str, ChannelChain | str] | None = None,
    ) -> None:
        start = time.perf_counter()
        hessians = collect_hessians(model, frames, forward, layers)
        self.collect_seconds = time.perf_counter() - start
        self.block = block
        self.chains = dict(chains or {})
        self.layers = {
            la.name: ObsLayer.build(la.shape, la.in_axis, hessians[la.name], percdamp)
            for la in layers
            if la.name in hessians
        }
        self._orders: dict[str, list[int]] = {}
        self.seconds = time.perf_counter() - start

    def supports(self, name: str) -> bool:
        return name in self.layers

    def channel_supported(self, name: str) -> bool:
        """A channel decision on ``name`` is made by OBS when its chain's consumer has a Hessian."""
        chain = self.chains.get(name)
        return isinstance(chain, ChannelChain) and chain.consumer in self.layers

    def weight(self, layer: PrunableLayer, weight: torch.Tensor, cand: Candidate) -> torch.Tensor:
        """The reconstructed weight of ``layer`` under an unstructured / 2:4 ``cand``."""
        return self.layers[layer.name].prune(weight, cand.pattern, cand.level, self.block)

    def channel_keep(
        self, layer: PrunableLayer, weights: Mapping[str, torch.Tensor], level: float
    ) -> torch.Tensor:
        """[K] bool, True = filter kept: round(level·K) (at most K−1) removed in the consumer's greedy
        group-OBS order, computed once per chain from the dense ``weights``."""
        chain = self.chains[layer.name]
        assert isinstance(chain, ChannelChain)
        producer = weights[layer.name].detach()
        k = producer.shape[layer.out_axis]
        if layer.name not in self._orders:
            dead = producer.movedim(layer.out_axis, 0).reshape(k, -1).abs().sum(dim=1) == 0
            self._orders[layer.name] = self.layers[chain.consumer].input_order(weights[chain.consumer], dead)
        keep = torch.ones(k, dtype=torch.bool)
        keep[self._orders[layer.name][: min(int(round(float(level) * k)), k - 1)]] = False
        return keep

    def refit_consumer(self, name: str, weight: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """The consumer ``name`` with its removed input channels (``removed`` [Cin] bool) zeroed and the
        other inputs refit (exact group OBS). Its input is 0 on those channels once the producer's
        filters and their per-channel tensors are masked, so this only adds compensation."""
        return self.layers[name].remove_inputs(weight, removed)


def _channel_changes(
    layer: PrunableLayer,
    weights: Mapping[str, torch.Tensor],
    level: float,
    chain: ChannelChain,
    operator: ObsOperator,
) -> dict[str, torch.Tensor]:
    """Producer filters zeroed (stored as values: apply finds them again as the zero filters), the
    per-channel tensors masked, the consumer refit."""
    keep = operator.channel_keep(layer, weights, level)
    shapes = {name: tuple(weights[name].shape) for name in (chain.producer, chain.consumer)}
    out: dict[str, torch.Tensor] = dict(chain_masks(chain, keep, shapes))
    producer = weights[layer.name].detach()
    rows = expand_axis_mask(keep, tuple(producer.shape), layer.out_axis)
    out[layer.name] = producer * rows.to(producer.dtype)
    out[chain.consumer] = operator.refit_consumer(chain.consumer, weights[chain.consumer], ~keep)
    return out


def candidate_changes(
    layer: PrunableLayer,
    weights: Mapping[str, torch.Tensor],
    cand: Candidate,
    chain: ChannelChain | str | None,
    operator: ObsOperator | None = None,
) -> dict[str, torch.Tensor]:
    """Name -> bool mask or new float values that realize ``cand`` with the run's operator."""
    if operator is None or cand.pattern == DENSE or cand.level == 0:
        return candidate_masks(layer, weights, cand, chain)
    if cand.pattern == "channel":
        if not operator.channel_supported(layer.name):
            return candidate_masks(layer, weights, cand, chain)
        assert isinstance(chain, ChannelChain)
        return _channel_changes(layer, weights, cand.level, chain, operator)
    if not operator.supports(layer.name):
        return candidate_masks(layer, weights, cand, chain)
    return {layer.name: operator.weight(layer, weights[layer.name], cand)}


def reconstructed_weights(
    operator: ObsOperator,
    layers: Sequence[PrunableLayer],
    weights: Mapping[str, torch.Tensor],
    cands: Sequence[Candidate],
) -> dict[str, torch.Tensor]:
    """Name -> new weight of every layer whose chosen candidate OBS realizes, and of every consumer of
    such a channel decision. Row decisions (unstructured, 2:4, a layer's own filters) come first; a
    consumer's input refit then keeps its zero rows at zero (each row is refit on its own)."""
    out: dict[str, torch.Tensor] = {}
    refits: list[tuple[str, torch.Tensor]] = []
    for layer, cand in zip(layers, cands, strict=True):
        if cand.pattern == DENSE or cand.level == 0:
            continue
        if cand.pattern == "channel" and operator.channel_supported(layer.name):
            chain = operator.chains[layer.name]
            assert isinstance(chain, ChannelChain)
            changes = _channel_changes(layer, weights, cand.level, chain, operator)
            out[layer.name] = changes[layer.name]
            refits.append((chain.consumer, ~operator.channel_keep(layer, weights, cand.level)))
        elif cand.pattern != "channel" and operator.supports(layer.name):
            out[layer.name] = operator.weight(layer, weights[layer.name], cand)
    for consumer, removed in refits:
        out[consumer] = operator.refit_consumer(consumer, out.get(consumer, weights[consumer]), removed)
    return {name: t.detach().cpu().contiguous() for name, t in out.items()}
