"""Latency and accuracy regression gate (``sparsefuse regress``).

stats: bootstrap CI of the median ratio; measure: interleaved ONNX Runtime timing with
per-module attribution; baseline: keyed baseline files; gate: the decision; report: Markdown,
JUnit XML and a PNG; accuracy: golden-output and metric gates.
"""
