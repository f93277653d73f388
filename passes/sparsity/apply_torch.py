"""Apply a plan to a torch model: permutations, then masks (kept for fine-tuning), or thinning.

Order matters and is the same as in apply_onnx: permute channels first, replace the weights the plan
reconstructed (OBS operator), compute every mask from those weights, then multiply.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.channel import ChannelChain, thin_chain
from sparsefuse.passes.sparsity.patterns import filter_mask
from sparsefuse.passes.sparsity.plan import SparsityPlan, plan_masks


def _tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        try:
            return model.get_buffer(name)
        except AttributeError:
            raise SparsefuseError(
                f"plan names {name!r}, which the model does not have",
                "apply the plan to the model it was made for",
            ) from None


def apply_permutations(model: torch.nn.Module, plan: SparsityPlan) -> None:
    """Reorder channels in place as recorded in the plan; the model's function is unchanged."""
    with torch.no_grad():
        for layer in plan.layers:
            if not layer.permutation:
                continue
            order = torch.as_tensor(layer.permutation["order"], dtype=torch.long)
            for name, axis in layer.permutation["tensors"].items():
                t = _tensor(model, name)
                t.copy_(t.index_select(int(axis), order.to(t.device)))


def apply_reconstructed(model: torch.nn.Module, plan: SparsityPlan) -> None:
    """Copy the plan's reconstructed weights (if any) into the model, in place."""
    with torch.no_grad():
        for name, value in (plan.reconstructed or {}).items():
            t = _tensor(model, name)
            if tuple(t.shape) != tuple(value.shape):
                raise SparsefuseError(
                    f"plan weights: {name} has shape {tuple(value.shape)}, the model's is {tuple(t.shape)}",
                    "apply the plan to the model it was made for",
                )
            t.copy_(value.to(device=t.device, dtype=t.dtype))


def apply_plan_torch(model: torch.nn.Module, plan: SparsityPlan) -> dict[str, torch.Tensor]:
    """Permute, replace reconstructed weights, mask in place and return the masks (name -> bool) for
    fine-tuning."""
    apply_permutations(model, plan)
    apply_reconstructed(model, plan)
    weights = {name: p.detach().cpu() for name, p in model.named_parameters()}
    masks = plan_masks(plan, weights)
    reapply_masks(model, masks)
    return masks


def reapply_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (call after each optimizer step when fine-tuning)."""
    with torch.no_grad():
        for name, mask in masks.items():
            p = model.get_parameter(name)
            p.mul_(mask.to(device=p.device, dtype=p.dtype))


def mask_gradients(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> list:
    """Gradient hooks that keep pruned weights at zero under plain SGD; returns the handles."""
    handles = []
    for name, mask in masks.items():
        p = model.get_parameter(name)
        m = mask.to(device=p.device, dtype=p.dtype)
        handles.append(p.register_hook(lambda grad, m=m: grad * m))
    return handles


def thin_model(model: torch.nn.Module, plan: SparsityPlan) -> torch.nn.Module:
    """A copy of ``model`` where every channel decision is a thinner dense layer (same function
    as the masked model). Other patterns are applied as masks."""
    thin = copy.deepcopy(model)
    apply_permutations(thin, plan)
    apply_reconstructed(thin, plan)
    weights = {name: p.detach().cpu() for name, p in thin.named_parameters()}
    masks = plan_masks(plan, weights)
    chains = []
    for layer in plan.layers:
        if layer.pattern == "channel" and layer.level > 0:
            tensors = {k: int(v) for k, v in layer.channel["tensors"].items()}
            consumer = layer.channel["consumer"]
            chain = ChannelChain(
                layer.name,
                consumer,
                tensors[layer.name],
                tensors[consumer],
                tuple((k, v) for k, v in tensors.items() if k not in (layer.name, consumer)),
                weights[layer.name].shape[layer.out_axis],
            )
            chains.append((chain, filter_mask(weights[layer.name], layer.out_axis, layer.level)))
    reapply_masks(thin, {k: v for k, v in masks.items()})
    for chain, keep in chains:
        thin_chain(thin, chain, keep)
    return thin
