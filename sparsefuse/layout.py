"""Where a compile's artifacts live inside OUT (docs/design.md §3), for every layer that reads or
writes them."""

from __future__ import annotations


def target_slug(tag: str) -> str:
    """A target tag as a file name: ``jetson/agx-orin-64gb`` -> ``jetson_agx-orin-64gb``."""
    return tag.replace("/", "_")


def lowered_rel(tag: str) -> str:
    """OUT-relative path of the graph lowered for ``tag``."""
    return f"lowered/{target_slug(tag)}.onnx"


def engine_rel(tag: str) -> str:
    """OUT-relative folder of the engine (or its build recipes) for ``tag``."""
    return f"engine/{target_slug(tag)}"
