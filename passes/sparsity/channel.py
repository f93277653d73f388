"""Channel chains: producer -> per-channel ops -> consumer, read off an eager trace.

A chain is what channel (filter) pruning and the 2:4 channel permutation need: removing or
permuting the producer's output channels must be mirrored on every per-channel tensor on the
way (bias, BatchNorm weight/bias/running stats) and on the consumer's input channels, so the
function is unchanged (permutation) or equals a thinner dense layer (pruning).

Only straight chains are handled: conv/linear/sparse conv -> {batch_norm, activations}* -> one
conv/linear/sparse conv. A residual add, concat, reshape, second consumer or model output on the
way is refused with the reason, because the widths there are tied to other tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsefuse.passes.sparsity.discover import CHANNEL_AXES, PrunableLayer
from sparsefuse.passes.sparsity.patterns import expand_axis_mask
from sparsefuse.passes.sparsity.trace import Call, Trace

PER_CHANNEL_OPS = frozenset(
    {
        "batch_norm",
        "relu",
        "relu_",
        "leaky_relu",
        "leaky_relu_",
        "gelu",
        "silu",
        "silu_",
        "sigmoid",
        "tanh",
        "hardtanh",
        "hardtanh_",
        "relu6",
        "elu",
        "hardswish",
        "mish",
        "dropout",
        "contiguous",
        "clone",
    }
)
_LAYER_OPS = {"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear", "sparse_conv3d"}
_BIAS_ARG = {"sparse_conv3d": 3}  # others: args[2]


@dataclass(frozen=True)
class ChannelChain:
    """Producer weight, consumer weight, and the per-channel tensors between them (name, axis)."""

    producer: str
    consumer: str
    producer_axis: int
    consumer_axis: int
    followers: tuple[tuple[str, int], ...]
    channels: int

    def tensors(self) -> dict[str, int]:
        """Every tensor a channel permutation or slice touches, with its channel axis."""
        return {self.producer: self.producer_axis, **dict(self.followers), self.consumer: self.consumer_axis}


def _weight_calls(trace: Trace, name: str) -> list[Call]:
    out = []
    for call in trace.calls:
        if call.op in _LAYER_OPS:
            w = call.args[2] if call.op == "sparse_conv3d" else call.args[1]
            if trace.name_of(w) == name:
                out.append(call)
    return out


def find_chain(trace: Trace, producer: PrunableLayer, layers: dict[str, PrunableLayer]) -> ChannelChain | str:
    """The chain starting at ``producer``, or a one-line reason why there is none."""
    calls = _weight_calls(trace, producer.name)
    if len(calls) != 1:
        return f"{producer.name} is used by {len(calls)} calls (shared weight)"
    if producer.groups != 1:
        return f"{producer.name} is a grouped conv"
    call = calls[0]
    followers: list[tuple[str, int]] = []
    bias = call.args[_BIAS_ARG.get(call.op, 2)] if len(call.args) > _BIAS_ARG.get(call.op, 2) else None
    if trace.name_of(bias):
        followers.append((trace.name_of(bias), 0))
    tensor_id, pos = call.out_ids[0], call.index
    while True:
        consumers = trace.consumers(tensor_id, pos)
        if not consumers:
            return f"{producer.name}: output is a model output or unused"
        nxt = consumers[0]
        if nxt.op in PER_CHANNEL_OPS and nxt.out_ids and nxt.out_ids[0] == tensor_id:
            pos = nxt.index  # in-place activation: the same tensor flows on
            continue
        if len(consumers) > 1:
            ops = ", ".join(c.op for c in consumers[:4])
            return f"{producer.name}: output has {len(consumers)} consumers ({ops}): branch/residual join"
        if nxt.op in PER_CHANNEL_OPS:
            if nxt.op == "batch_norm":
                bound = (
                    dict(
                        zip(
                            ("input", "running_mean", "running_var", "weight", "bias"), nxt.args, strict=False
                        )
                    )
                    | nxt.kwargs
                )
                for key in ("running_mean", "running_var", "weight", "bias"):
                    name = trace.name_of(bound.get(key))
                    if name:
                        followers.append((name, 0))
            tensor_id, pos = nxt.out_ids[0], nxt.index
            continue
        if nxt.op in _LAYER_OPS:
            w = nxt.args[2] if nxt.op == "sparse_conv3d" else nxt.args[1]
            cname = trace.name_of(w)
            if cname not in layers or nxt.arg_ids[0] != tensor_id:
                return f"{producer.name}: output reaches {nxt.op} through a non-weight input"
            consumer = layers[cname]
            if consumer.groups != 1:
                return f"{producer.name}: consumer {cname} is a grouped conv"
            if len(_weight_calls(trace, cname)) != 1:
                return f"{producer.name}: consumer {cname} weight is shared"
            channels = producer.shape[producer.out_axis]
            if consumer.shape[consumer.in_axis] != channels:
                return f"{producer.name}: consumer {cname} input width differs (reshape on the way)"
            return ChannelChain(
                producer.name, cname, producer.out_axis, consumer.in_axis, tuple(followers), channels
            )
        return f"{producer.name}: output reaches '{nxt.op}' (residual/concat join or non-channel-wise op)"


def find_chains(trace: Trace, layers: Sequence[PrunableLayer]) -> dict[str, ChannelChain | str]:
    """Chain (or refusal reason) for every layer as a producer, keyed by producer name."""
    by_name = {layer.name: layer for layer in layers}
    return {layer.name: find_chain(trace, layer, by_name) for layer in layers}


def chain_masks(
    chain: ChannelChain, keep: torch.Tensor, shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Weight masks equivalent to removing the channels where ``keep`` is False."""
    return {
        chain.producer: expand_axis_mask(keep, shapes[chain.producer], chain.producer_axis),
        chain.consumer: expand_axis_mask(keep, shapes[chain.consumer], chain.consumer_axis),
    }


def _tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return model.get_buffer(name)


def permute_chain(model: torch.nn.Module, chain: ChannelChain, perm: torch.Tensor) -> None:
    """Reorder the chain's channels in place (new channel j = old channel perm[j]); function unchanged."""
    with torch.no_grad():
        for name, axis in chain.tensors().items():
            t = _tensor(model, name)
            t.copy_(t.index_select(axis, perm.to(t.device)))


def thin_chain(model: torch.nn.Module, chain: ChannelChain, keep: torch.Tensor) -> None:
    """Slice the chain's tensors to the kept channels (a thinner dense layer) and fix widths."""
    index = torch.nonzero(keep).flatten()
    for name, axis in chain.tensors().items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, attr)
        new = old.detach().index_select(axis, index.to(old.device)).clone()
        if isinstance(old, torch.nn.Parameter):
            setattr(module, attr, torch.nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            setattr(module, attr, new)
        width = int(index.numel())
        if name == chain.producer:
            _set_width(module, ("out_channels", "out_features", "num_features"), width)
        elif name == chain.consumer:
            _set_width(module, ("in_channels", "in_features"), width)
        else:
            _set_width(module, ("num_features",), width)


def _set_width(module: torch.nn.Module, attrs: tuple[str, ...], width: int) -> None:
    for attr in attrs:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, width)


__all__ = [
    "CHANNEL_AXES",
    "ChannelChain",
    "chain_masks",
    "find_chain",
    "find_chains",
    "permute_chain",
    "thin_chain",
]
