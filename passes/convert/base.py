"""The conversion pass's shared shapes: report rows, the converter protocol, and the driver.

A converter is one module per third-party library (``spconv.py``, ``voxelization.py``,
``bev_pool.py``, ...). It rewrites, IN PLACE on the copy it is given, every module or function of
its library into our ops with identical numerics, and returns one :class:`ConversionRow` per
thing it converted. :func:`convert` copies the model, runs every converter, then refuses anything
third-party that is left, by module path, type and the supported list.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from sparsefuse.errors import SparsefuseError

# Module prefixes of libraries whose modules cannot be exported as they are: anything from them
# that no converter took is refused by name.
THIRD_PARTY_PREFIXES = ("spconv.", "mmcv.ops", "mmdet3d.ops", "torchsparse", "MinkowskiEngine", "cumm.")


@dataclass(frozen=True)
class ConversionRow:
    """One converted (or folded) thing. path: module path in the model ("" = root), or
    ``<module path>:<function name>`` for a function call site; source: the original type or
    function; target: what it became (e.g. "SparseConv3d(subm, relu)", "folded into conv.0")."""

    path: str
    source: str
    target: str
    note: str = ""


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` did: ``converted`` rows, and ``kept``: {module type: count} of the
    plain torch modules left as they are (they export with the standard exporter)."""

    converted: tuple[ConversionRow, ...]
    kept: Mapping[str, int]
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"converted": [asdict(r) for r in self.converted], "kept": dict(sorted(self.kept.items())),
                "options": dict(self.options)}

    def table(self) -> str:
        """A Markdown table of the converted rows, then a line of what was kept."""
        lines = ["| path | was | now | note |", "|---|---|---|---|"]
        lines += [f"| `{r.path or '(root)'}` | {r.source} | {r.target} | {r.note} |" for r in self.converted]
        kept = ", ".join(f"{name} x{n}" for name, n in sorted(self.kept.items()))
        return "\n".join(lines) + f"\n\nkept as plain torch: {kept or 'nothing'}\n"


@dataclass(frozen=True)
class ConvertContext:
    """What a converter may use besides the model: sample frames (dicts of named tensors, the
    forward's arguments; may be empty) and options keyed by converter (e.g. {"bev_pool": {...}})."""

    frames: Sequence[Mapping[str, torch.Tensor]] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    forward: Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], Any] | None = None


class Converter(Protocol):
    """One third-party library. ``supported``: the names it converts (for the refusal message)."""

    library: str
    supported: tuple[str, ...]

    def convert(self, model: torch.nn.Module, ctx: ConvertContext) -> list[ConversionRow]: ...


def qualified_type(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_third_party(obj: Any) -> bool:
    return qualified_type(obj).startswith(THIRD_PARTY_PREFIXES)


def refuse_leftovers(model: torch.nn.Module, converters: Sequence[Converter]) -> None:
    """One SparsefuseError naming the first third-party module no converter took."""
    supported = sorted({f"{c.library}.{name}" for c in converters for name in c.supported})
    for path, module in model.named_modules():
        if is_third_party(module):
            raise SparsefuseError(
                f"module {path or '(root)'} of type {qualified_type(module)} cannot be converted",
                f"supported: {', '.join(supported)}; replace it with plain torch or a supported module",
            )


def kept_modules(model: torch.nn.Module) -> dict[str, int]:
    """{type name: count} of the leaf modules (no children) in the converted model."""
    kept: dict[str, int] = {}
    for _, module in model.named_modules():
        ours = type(module).__module__.startswith("sparsefuse.")
        if next(module.children(), None) is None and not ours:
            name = type(module).__name__
            kept[name] = kept.get(name, 0) + 1
    return kept


def run_converters(
    model: torch.nn.Module, converters: Sequence[Converter], ctx: ConvertContext
) -> tuple[torch.nn.Module, ConversionReport]:
    """Copy ``model`` (the caller's stays untouched), run every converter on the copy in order,
    refuse leftovers, and return (converted copy in eval mode, report)."""
    work = copy.deepcopy(model).eval()
    rows: list[ConversionRow] = []
    for converter in converters:
        rows += converter.convert(work, ctx)
    refuse_leftovers(work, converters)
    return work, ConversionReport(tuple(rows), kept_modules(work), dict(ctx.options))
