"""Precision stage (docs/design.md §6): the precision lives in the graph (TensorRT 11 is strongly typed).

- ``fp16``: float tensors and initializers in FP16 with FP32 islands chosen from measured per-node FP16
  error on calibration frames, a Cast only at each island boundary (fp16.py, islands.py);
- ``int8``: post-training quantization with explicit QuantizeLinear / DequantizeLinear, weights per
  output channel, activations per tensor from a calibrator (int8.py, calibrate.py);
- mixed (Python API, mixed.py / mixed_measure.py): {fp16, int8} x {dense, 2:4} per layer, allocated by
  the sparsity stage's knapsack DP under a latency budget (``allocate_mixed``).

The compile pipeline calls :func:`sparsefuse.passes.precision.stage.run_precision_stage`.
"""
