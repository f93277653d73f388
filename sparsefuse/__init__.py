"""sparsefuse: a deployment compiler for multimodal (camera + LiDAR) BEV perception models.

The subpackages map onto the top-level folders (docs/design.md §2):
``sparsefuse.compiler`` -> compiler/, ``sparsefuse.passes`` -> passes/, and so on.
This root package holds only what every layer may import: the error family, atomic I/O, the
artifact layout and the model spec. The Python API (``sparsefuse.compile``, ``prune``,
``profile``, ``handoff``, ``convert``; compiler/api.py) is imported on first use.
"""

__version__ = "0.1.0"

_API = ("compile", "prune", "prune_model", "profile", "handoff", "convert")
_SPEC = ("ModelSpec", "InputSpec", "OutputSpec")


def __getattr__(name: str):
    if name in _API:
        from sparsefuse.compiler import api

        return getattr(api, name)
    if name in _SPEC:
        from sparsefuse import spec

        return getattr(spec, name)
    if name == "SparsefuseError":
        from sparsefuse.errors import SparsefuseError

        return SparsefuseError
    raise AttributeError(f"module 'sparsefuse' has no attribute {name!r}")
