"""sparsefuse.passes: graph passes (docs/design.md §2).

- manager.py: the pass runner (timing, onnx.checker + shape inference, logging);
- export.py: torch -> ONNX, custom ops as single ``sparsefuse`` nodes, param map in the metadata;
- cleanup.py: constant folding / dead code, keeping parameter initializers by name;
- lower.py: per-backend lowering (function bodies for ONNX Runtime, bare nodes for TensorRT);
- sparsity/: layer-adaptive sparsity.
"""
