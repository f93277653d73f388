"""``SparsityConfig``: the frozen, validated options of a sparsity stage.

Parsed from the same strings as ``sparsefuse prune`` (``--budget params=0.25`` …) and from one
compile-style spec string ``"budget=params=0.25,allocator=lamp,pattern=2:4,calib=8"``.

``operator`` is the within-layer pruning operator: ``magnitude`` (zero the weights, keep the rest) or
``obs`` (second-order reconstruction, passes/sparsity/obs.py: OBS mask selection and SparseGPT updates
of the surviving weights; ``obs_percdamp`` is its dampening fraction, ``obs_block`` its lazy-batch block).

Budget semantics: the value is the fraction of the dense cost of the prunable layers that may
remain. ``params=0.25`` keeps ≤ 25 % of the prunable weights (75 % parameter sparsity);
``flops=0.4`` keeps ≤ 40 % of their dense FLOPs; ``latency=<table.json>[@0.6]`` keeps ≤ 60 %
(default 50 %) of the table's dense latency summed over layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from sparsefuse.errors import SparsefuseError

ALLOCATORS = ("mmprune4u", "rdprune", "lamp", "uniform", "global", "erk")
PATTERNS = ("unstructured", "2:4", "channel")
BUDGET_KINDS = ("params", "flops", "latency")
NM_POLICIES = ("valid", "tensorrt")
# Where δ is measured: after each output's consumer transform (the model spec's), or on raw outputs.
DISTORTION_SPACES = ("consumer", "raw")
DEFAULT_LATENCY_FRACTION = 0.5
OPERATORS = ("magnitude", "obs")


@dataclass(frozen=True)
class SparsityConfig:
    budget_kind: str = "params"
    budget: float = 0.5
    latency_table: str | None = None
    allocator: str = "mmprune4u"
    pattern: str = "unstructured"
    calib: int = 8
    levels: int = 21
    beta: float = 1.0
    modality_weights: tuple[tuple[str, float], ...] = (("camera", 1.0), ("lidar", 1.0), ("fusion", 1.0))
    worst_case: bool = False
    synthetic: bool = False
    nm_policy: str = "valid"
    permute: bool = False
    dp_resolution: int = 10_000
    seed: int = 0
    distortion: str = "consumer"
    operator: str = "magnitude"
    obs_percdamp: float = 0.01
    obs_block: int = 128

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("allocator", self.allocator, ALLOCATORS)
        _check_choice("pattern", self.pattern, PATTERNS)
        _check_choice("budget kind", self.budget_kind, BUDGET_KINDS)
        _check_choice("nm_policy", self.nm_policy, NM_POLICIES)
        _check_choice("distortion", self.distortion, DISTORTION_SPACES)
        _check_choice("operator", self.operator, OPERATORS)
        if not 0.0 < self.obs_percdamp <= 10.0 or self.obs_block < 4 or self.obs_block % 4:
            raise SparsefuseError(
                f"obs_percdamp={self.obs_percdamp}, obs_block={self.obs_block}",
                "need 0 < obs_percdamp ≤ 10 (e.g. 0.01) and obs_block a positive multiple of 4 (e.g. 128)",
            )
        if not 0.0 < self.budget <= 1.0:
            raise SparsefuseError(
                f"budget {self.budget} is outside (0, 1]",
                "give the fraction of the dense cost to keep, e.g. params=0.25",
            )
        if self.budget_kind == "latency" and not self.latency_table:
            raise SparsefuseError(
                "a latency budget needs a table file", "use --budget latency=<table.json>[@0.6]"
            )
        if self.calib < 1 or self.levels < 2 or self.dp_resolution < 16:
            raise SparsefuseError(
                f"calib={self.calib}, levels={self.levels}, dp_resolution={self.dp_resolution}",
                "need calib ≥ 1, levels ≥ 2, dp_resolution ≥ 16",
            )
        if self.beta < 0:
            raise SparsefuseError(f"beta={self.beta} is negative", "use beta ≥ 0 (0 = plain RD-Prune)")
        if self.seed < 0:
            raise SparsefuseError(f"seed={self.seed} is negative", "use a seed ≥ 0, e.g. seed=0")
        for name, top in INT_LIMITS.items():
            if getattr(self, name) > top:
                raise SparsefuseError(f"{name}={getattr(self, name)} is absurdly large",
                                      f"use {name} ≤ {top} (default {getattr(SparsityConfig, name)})")
        if any(not math.isfinite(w) or w < 0 for _, w in self.modality_weights):
            raise SparsefuseError(f"modality weights {self.modality_weights} are not all finite and ≥ 0",
                                  "use e.g. camera=1,lidar=2,fusion=1")

    @property
    def effective_beta(self) -> float:
        """β used by the DP: the rdprune allocator is MMPrune4U with β = 0."""
        return 0.0 if self.allocator == "rdprune" else self.beta

    def weights(self) -> dict[str, float]:
        return dict(self.modality_weights)


# Upper bounds of the integer options: each multiplies the stage's work or memory.
INT_LIMITS = {"calib": 4096, "levels": 1001, "dp_resolution": 1_000_000, "obs_block": 65_536}


def _check_types(config: SparsityConfig) -> None:
    """Each option has its field's type (a list where a number belongs, a string where a flag belongs,
    NaN or infinity are refused here, before any of them reaches the allocator)."""
    for item in fields(config):
        value, kind = getattr(config, item.name), str(item.type)
        if item.name == "latency_table" and value is None:
            continue
        if item.name == "modality_weights":
            if not isinstance(value, tuple) or not all(
                isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], int | float) and not isinstance(pair[1], bool) for pair in value
            ):
                raise SparsefuseError(f"modality_weights={value!r} is not a list of name=number",
                                      "use e.g. camera=1,lidar=2,fusion=1")
            continue
        if kind == "bool":
            ok, want = isinstance(value, bool), "true or false"
        elif kind == "int":
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            raise SparsefuseError(f"sparsity option {item.name}={value!r} is not {want}",
                                  f"e.g. {item.name}={getattr(SparsityConfig, item.name)}")


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SparsefuseError(f"unknown {field} {value!r}", f"choose one of {', '.join(allowed)}")


def parse_budget(text: str) -> tuple[str, float, str | None]:
    """``params=0.25`` | ``flops=0.4`` | ``latency=<table.json>[@fraction]`` -> (kind, fraction, table)."""
    kind, sep, value = text.partition("=")
    kind = kind.strip()
    if not sep or kind not in BUDGET_KINDS:
        raise SparsefuseError(
            f"cannot parse budget {text!r}", "use params=0.25, flops=0.4 or latency=<table.json>[@0.6]"
        )
    if kind == "latency":
        table, _, frac = value.partition("@")
        if not Path(table).is_file():
            raise SparsefuseError(
                f"latency table {table!r} not found", "give a JSON file {layer: {candidate_key: ms}}"
            )
        return kind, _fraction(frac or str(DEFAULT_LATENCY_FRACTION), text), table
    return kind, _fraction(value, text), None


def _fraction(value: str, text: str) -> float:
    try:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number
    except ValueError:
        raise SparsefuseError(
            f"budget {text!r}: {value!r} is not a number", "give a fraction in (0, 1], e.g. params=0.25"
        ) from None


def parse_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``camera=1,lidar=2,fusion=1`` or ``camera:1/lidar:2`` -> (("camera", 1.0), ...)."""
    out = []
    for part in filter(None, (p.strip() for p in text.replace("/", ",").split(","))):
        name, _, value = part.replace(":", "=").partition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            raise SparsefuseError(
                f"modality weight {part!r} is not name=number", "use e.g. camera=1,lidar=2,fusion=1"
            ) from None
    return tuple(out)


def config_from_options(budget: str = "params=0.5", **options) -> SparsityConfig:
    """Build a config from CLI-style strings; unknown option names are a user error."""
    kind, value, table = parse_budget(budget)
    known = {f.name: f for f in fields(SparsityConfig)}
    kwargs: dict = {"budget_kind": kind, "budget": value, "latency_table": table}
    for key, raw in options.items():
        if raw is None:
            continue
        if key not in known:
            raise SparsefuseError(f"unknown sparsity option {key!r}", f"known: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(key, raw, known[key].type)
    return SparsityConfig(**kwargs)


def _coerce(key: str, raw, annotation) -> object:
    if key == "modality_weights" and isinstance(raw, dict):  # a JSON / TOML table {name: weight}
        return tuple((str(name), weight) for name, weight in raw.items())
    if not isinstance(raw, str):
        return raw
    if key == "modality_weights":
        return parse_weights(raw)
    try:
        if "bool" in str(annotation):
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if "int" in str(annotation) and "float" not in str(annotation):
            return int(raw)
        if "float" in str(annotation):
            return float(raw)
    except ValueError:
        raise SparsefuseError(
            f"sparsity option {key}={raw!r} has the wrong type", f"expected {annotation}"
        ) from None
    return raw


def parse_spec(spec: str) -> SparsityConfig:
    """``"budget=params=0.25,allocator=lamp,pattern=2:4,calib=8"`` (compile's --sparsity)."""
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SparsefuseError(
                f"sparsity spec item {part!r} has no '='", "use key=value items, comma-separated"
            )
        options[key.strip().replace("-", "_")] = value
    budget = options.pop("budget", "params=0.5")
    return config_from_options(budget, **options)


def with_overrides(config: SparsityConfig, **changes) -> SparsityConfig:
    return replace(config, **changes)
