"""Where a compile's artifacts live inside OUT (docs/design.md §3), for every layer that reads or
writes them."""

from __future__ import annotations

import re

from sparsefuse.errors import SparsefuseError

# A tag is one name (``cpu``) or ``kind/name`` (``jetson/agx-orin-64gb``). Each part starts with a
# letter or digit, so "." and ".." can never be a part, and the slug can never leave OUT/engine/.
_TAG_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_TAG = re.compile(rf"{_TAG_PART}(/{_TAG_PART})?")
TAG_FORM = ("one name or kind/name (e.g. cpu, desktop/h100, jetson/agx-orin-64gb): each part starts "
            "with a letter or digit and holds only letters, digits, '.', '_' or '-' (64 at most)")


def tag_problem(tag: object) -> str | None:
    """Why ``tag`` cannot name a target (None when it can)."""
    if not isinstance(tag, str):
        return f"is not a string ({type(tag).__name__})"
    if _TAG.fullmatch(tag) is None:
        return f"is {tag!r}, not of the form name or kind/name"
    return None


def check_tag(tag: str) -> str:
    """``tag`` itself, or SparsefuseError when it is not a valid target tag."""
    problem = tag_problem(tag)
    if problem is not None:
        raise SparsefuseError(f"target tag {problem}", f"a tag is {TAG_FORM}")
    return tag


def target_slug(tag: str) -> str:
    """A target tag as a file name: ``jetson/agx-orin-64gb`` -> ``jetson_agx-orin-64gb``."""
    return check_tag(tag).replace("/", "_")


def lowered_rel(tag: str) -> str:
    """OUT-relative path of the graph lowered for ``tag``."""
    return f"lowered/{target_slug(tag)}.onnx"


def engine_rel(tag: str) -> str:
    """OUT-relative folder of the engine (or its build recipes) for ``tag``."""
    return f"engine/{target_slug(tag)}"
