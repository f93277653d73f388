"""SparsityConfig parsing: CLI strings and compile spec strings; user mistakes are one-line errors."""

from __future__ import annotations

import json

import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.config import SparsityConfig, config_from_options, parse_budget, parse_spec


def test_budget_strings(tmp_path):
    assert parse_budget("params=0.25") == ("params", 0.25, None)
    assert parse_budget("flops=0.4") == ("flops", 0.4, None)
    table = tmp_path / "lat.json"
    table.write_text(json.dumps({"a.weight": {"dense@0": 1.0}}))
    assert parse_budget(f"latency={table}@0.6") == ("latency", 0.6, str(table))
    assert parse_budget(f"latency={table}")[1] == 0.5
    for bad in ("params", "speed=0.3", "params=abc", f"latency={tmp_path}/missing.json"):
        with pytest.raises(SparsefuseError):
            parse_budget(bad)


def test_spec_and_options_build_the_same_frozen_config():
    a = parse_spec("budget=params=0.25,allocator=lamp,pattern=2:4,calib=3,modality_weights=camera:1/lidar:2")
    b = config_from_options(
        "params=0.25", allocator="lamp", pattern="2:4", calib="3", modality_weights="camera=1,lidar=2"
    )
    assert a == b and a.calib == 3 and a.weights() == {"camera": 1.0, "lidar": 2.0}
    with pytest.raises(AttributeError):
        a.budget = 0.3  # frozen
    assert SparsityConfig(allocator="rdprune", beta=2.0).effective_beta == 0.0


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"allocator": "magic"}, "allocator"),
        ({"pattern": "4:8"}, "pattern"),
        ({"budget": 1.5}, "budget"),
        ({"beta": -1.0}, "beta"),
    ],
)
def test_bad_values_name_the_field(kwargs, word):
    with pytest.raises(SparsefuseError) as err:
        SparsityConfig(**kwargs)
    assert word in err.value.one_line()
