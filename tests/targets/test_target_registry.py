from __future__ import annotations

import dataclasses

import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.registry import SOURCED_FIELDS, get_target, list_targets, load_target_file

REQUIRED_TAGS = {
    "cpu",
    "desktop/rtx-3090",
    "desktop/rtx-4090",
    "desktop/a100",
    "desktop/h100",
    "desktop/l4",
    "jetson/agx-orin-64gb",
    "jetson/agx-orin-32gb",
    "jetson/orin-nx-16gb",
    "jetson/orin-nano-8gb",
    "jetson/agx-xavier",
}


def test_all_required_tags_are_registered():
    assert {t.tag for t in list_targets()} == REQUIRED_TAGS


@pytest.mark.parametrize("tag", sorted(REQUIRED_TAGS))
def test_every_number_has_a_source(tag):
    target = get_target(tag)
    for name in SOURCED_FIELDS:
        value = getattr(target, name)
        if value not in (None, 0, 0.0, (), ""):
            assert target.source(name), f"{tag}: {name} has no source"


def test_gpu_targets_are_consistent():
    for target in list_targets():
        if target.backend != "tensorrt":
            continue
        assert target.sm and target.tensorrt and target.dram_gbps > 0 and target.fp16_dense_tflops > 0
        if target.features()["sparse_2to4"]:
            assert target.fp16_sparse_tflops == pytest.approx(2 * target.fp16_dense_tflops, rel=0.01)
            assert target.int8_sparse_tops == pytest.approx(2 * target.int8_dense_tops, rel=0.01)
        else:
            assert target.fp16_sparse_tflops == 0.0
        if target.is_jetson:
            assert target.workspace_mib and target.workspace_mib * 2**20 < target.memory_gb * 1e9 / 4
            assert target.power_modes


def test_implied_features():
    orin = get_target("jetson/agx-orin-64gb")
    assert orin.tensorrt == "10.3" and orin.jetpack == "6.2" and orin.sm == 87
    assert orin.features()["python_plugins"] is False  # QDP needs TensorRT 10.6
    assert orin.features()["ipluginv3"] and orin.features()["sparse_2to4"] and orin.features()["dla"]
    assert orin.int8_sparse_tops == 170.0 and orin.dla_cores == 2
    xavier = get_target("jetson/agx-xavier")
    assert not xavier.features()["ipluginv3"] and not xavier.features()["sparse_2to4"]
    assert not xavier.features()["builder_optimization_level"]
    h100 = get_target("desktop/h100")
    assert h100.features()["python_aot_plugins"] and h100.features()["fp8"]
    assert not get_target("jetson/orin-nano-8gb").features()["dla"]


def test_targets_are_frozen_and_hashable():
    target = get_target("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.sm = 80  # type: ignore[misc]
    assert {target: 1}[get_target("cpu")] == 1
    assert get_target("jetson/agx-orin-64gb").slug == "jetson_agx-orin-64gb"


def test_unknown_tag_lists_known_tags_and_toml_hint():
    with pytest.raises(SparsefuseError) as err:
        get_target("jetson/orin-agx")
    assert "jetson/agx-orin-64gb" in err.value.message and "cpu" in err.value.message
    assert "TOML" in err.value.hint


USER_TOML = """
tag = "lab/my-orin"
name = "Lab Orin at 30 W"
kind = "jetson"
backend = "tensorrt"
sm = 87
tensorrt = "10.3"
fp16_dense_tflops = 20.0
dram_gbps = 150.0
dla_cores = 1
[[power_modes]]
name = "30W"
budget_w = 30
nvpmodel_id = 2
[sources]
sm = "lab"
tensorrt = "lab"
fp16_dense_tflops = "measured in the lab"
dram_gbps = "measured in the lab"
dla_cores = "lab"
power_modes = "lab"
"""


def test_user_target_from_toml(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text(USER_TOML)
    target = get_target(str(path))
    assert target.tag == "lab/my-orin" and target.fp16_dense_tflops == 20.0
    assert target.power_modes[0].nvpmodel_id == 2
    assert target.source("dram_gbps") == "measured in the lab"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("dram_gbps = 150.0", 'dram_gbps = "fast"'), "dram_gbps"),
        (("dram_gbps = 150.0", "dram_gbps = -1.0"), "dram_gbps"),
        (('kind = "jetson"', 'kind = "phone"'), "kind"),
        (('backend = "tensorrt"', 'backend = "tvm"'), "backend"),
        (('dram_gbps = "measured in the lab"\n', ""), "sources.dram_gbps"),
        (("sm = 87\n", ""), "sm"),
        (('tensorrt = "10.3"\n', 'tensorrt = "ten"\n'), "tensorrt"),
        (("budget_w = 30", "budget_w = 0"), "power_modes[0].budget_w"),
        (("dla_cores = 1\n", "dla_cores = 1\nbogus = 3\n"), "bogus"),
    ],
)
def test_user_target_validation_names_the_field(tmp_path, edit, field):
    path = tmp_path / "bad.toml"
    old, new = edit
    assert old in USER_TOML
    path.write_text(USER_TOML.replace(old, new, 1))
    with pytest.raises(SparsefuseError) as err:
        load_target_file(path)
    assert f"field '{field}'" in err.value.message


def test_bad_toml_files(tmp_path):
    with pytest.raises(SparsefuseError, match="not found"):
        get_target(str(tmp_path / "nope.toml"))
    (tmp_path / "broken.toml").write_text("tag = [")
    with pytest.raises(SparsefuseError, match="not valid TOML"):
        get_target(str(tmp_path / "broken.toml"))


def test_the_targets_table_keeps_every_tag_whole_at_80_columns(monkeypatch, capsys):
    from sparsefuse.compiler.cli import main
    from sparsefuse.targets.registry import list_targets

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    for target in list_targets():
        assert any(line.split()[:1] == [target.tag] for line in lines if line.strip()), target.tag
