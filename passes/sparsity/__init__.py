"""Layer-adaptive sparsity (docs/design.md §5): discover -> sensitivity (RD curves, MMPrune4U λ) ->
allocate (knapsack DP or baselines) -> patterns (unstructured, 2:4, channel) -> plan -> apply.

The compile pipeline calls :func:`run_sparsity_stage`; ``sparsefuse prune`` is its CLI.
"""

from sparsefuse.passes.sparsity.config import SparsityConfig, config_from_options, parse_spec
from sparsefuse.passes.sparsity.plan import SparsityPlan, plan_masks, read_plan
from sparsefuse.passes.sparsity.stage import run_sparsity_stage

__all__ = [
    "SparsityConfig",
    "SparsityPlan",
    "config_from_options",
    "parse_spec",
    "plan_masks",
    "read_plan",
    "run_sparsity_stage",
]
