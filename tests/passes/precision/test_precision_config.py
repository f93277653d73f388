"""Precision options: every bad value refused with a message and a hint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.precision.config import check_target_precision, make_precision_config


def test_defaults_and_percentile_value():
    assert make_precision_config("int8").calibrator == "max"
    assert make_precision_config("int8", "percentile").percentile == 99.99
    assert make_precision_config("int8").int8_sensitivity == 0.1
    config = make_precision_config("int8", "percentile=99.9", 4, int8_sensitivity=0.05)
    assert (config.percentile, config.calib_frames, config.int8_sensitivity) == (99.9, 4, 0.05)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("int4",), {}, "unknown precision"),
    (("int8", "kl"), {}, "unknown calibrator 'kl'"),
    (("int8", "max=3"), {}, "takes no value"),
    (("int8", "percentile=120"), {}, "percentile must be in (0, 100]"),
    (("fp16", "max"), {}, "--calibrator applies to --precision int8"),
    (("int8", None, 0), {}, "--calib-frames must be an integer"),
    (("int8",), {"int8_sensitivity": 0.0}, "--int8-sensitivity must be in (0, 1]"),
    (("fp16",), {"int8_sensitivity": 0.1}, "--int8-sensitivity applies to --precision int8"),
])
def test_bad_options_are_refused(args, kwargs, message):
    with pytest.raises(SparsefuseError) as info:
        make_precision_config(*args, **kwargs)
    assert message in info.value.message and info.value.hint


def test_target_rates_decide_what_it_can_run():
    no_int8 = SimpleNamespace(tag="my/gpu", backend="tensorrt", fp16_dense_tflops=10.0, int8_dense_tops=0.0)
    check_target_precision("fp16", no_int8)
    with pytest.raises(SparsefuseError, match="cannot run int8"):
        check_target_precision("int8", no_int8)
    cpu = SimpleNamespace(tag="cpu", backend="onnxruntime", fp16_dense_tflops=0.0, int8_dense_tops=0.0)
    check_target_precision("int8", cpu)  # ORT's CPU provider runs QDQ and FP16 graphs on any host
