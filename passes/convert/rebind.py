"""Rebinding free functions that user modules call through their module globals, in the COPY only.

User code calls e.g. ``bev_pool(...)`` after ``from my_ops import bev_pool`` at the top of its file:
the name resolves through the method's ``__globals__`` (the user module's dict), which the original
model shares, so patching that dict would also change the original. Instead, each module instance
of the converted copy gets instance-level bound methods whose functions are copies with a globals
dict in which the name points at our replacement:

- one globals copy per user module (and replacement); functions of that module the methods call
  that (transitively) use the name are re-globalized into the same copy, so helpers see it too;
- a replacement shared by every instance (stateless) survives ``copy.deepcopy`` by itself: deepcopy
  rebinds bound methods to the copied instance;
- a per-instance replacement (a resolver ``instance -> callable``, e.g. a submodule holding static
  buffers) gets one globals copy per instance and an instance-level ``__deepcopy__`` that rebinds
  the copy to ITS own replacement.

Only plain functions defined in classes outside torch / sparsefuse are rebound (not staticmethods or
classmethods); :func:`sites` finds which methods use which global function.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

_RECORD = "_sparsefuse_rebind"
_SKIPPED_PREFIXES = ("torch.", "sparsefuse.", "builtins")


def referenced_names(code: types.CodeType) -> set[str]:
    """Global / attribute names a code object (and its nested lambdas, comprehensions) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= referenced_names(const)
    return names


def uses(fn: types.FunctionType, target: Callable, seen: set[int] | None = None) -> bool:
    """``fn`` resolves some global name to ``target``, directly or through functions of its own module."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return False
    seen.add(id(fn))
    for name in referenced_names(fn.__code__):
        value = fn.__globals__.get(name)
        if value is target:
            return True
        if (
            isinstance(value, types.FunctionType)
            and value.__globals__ is fn.__globals__
            and uses(value, target, seen)
        ):
            return True
    return False


def user_methods(cls: type) -> Iterator[tuple[str, types.FunctionType]]:
    """(name, function) of the plain methods ``cls`` resolves through its MRO, user classes only."""
    found: set[str] = set()
    for klass in cls.__mro__:
        module = getattr(klass, "__module__", "") or ""
        for name, value in vars(klass).items():
            if name in found:
                continue
            found.add(name)
            if isinstance(value, types.FunctionType) and not module.startswith(_SKIPPED_PREFIXES):
                yield name, value


@dataclass(frozen=True)
class Site:
    """Method ``method`` of a module's class calls ``function`` under the global ``name``."""

    method: str
    name: str
    function: Callable


def sites(module: nn.Module, is_target: Callable[[Any], bool]) -> list[Site]:
    """Every (method, global name, function) of ``module``'s class where the function satisfies
    ``is_target`` and the method uses it (directly or through its module's functions)."""
    out: list[Site] = []
    for method, fn in user_methods(type(module)):
        targets: dict[str, Callable] = {}
        _collect(fn, is_target, targets, set())
        out += [Site(method, name, target) for name, target in sorted(targets.items())]
    return out


def _collect(
    fn: types.FunctionType, is_target: Callable[[Any], bool], out: dict[str, Callable], seen: set[int]
) -> None:
    if id(fn) in seen:
        return
    seen.add(id(fn))
    for name in referenced_names(fn.__code__):
        value = fn.__globals__.get(name)
        if value is None:
            continue
        if is_target(value):
            out[name] = value
        elif isinstance(value, types.FunctionType) and value.__globals__ is fn.__globals__:
            _collect(value, is_target, out, seen)


def copy_function(fn: types.FunctionType, globals_: dict[str, Any]) -> types.FunctionType:
    """``fn`` with another globals dict (same code, defaults, closure, name, attributes)."""
    new = types.FunctionType(fn.__code__, globals_, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = copy.copy(fn.__kwdefaults__)
    new.__qualname__ = fn.__qualname__
    new.__dict__.update(fn.__dict__)
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = dict(fn.__annotations__)
    return new


def globals_with(base: dict[str, Any], replaced: dict[str, tuple[Callable, Any]]) -> dict[str, Any]:
    """A copy of module globals ``base`` where each name -> (original, replacement) points at the
    replacement, and the module's functions that use an original point at re-globalized copies."""
    new = dict(base)
    for name, (_, replacement) in replaced.items():
        new[name] = replacement
    for name, value in base.items():
        if (
            isinstance(value, types.FunctionType)
            and value.__globals__ is base
            and any(uses(value, original) for original, _ in replaced.values())
        ):
            new[name] = copy_function(value, new)
    return new


@dataclass
class Rebinding:
    """Global ``name`` (now the function ``original``) becomes ``replacement`` for one instance.

    ``per_instance``: ``replacement`` is a resolver ``instance -> callable`` (called again on a
    deepcopy), else the callable itself, shared by all instances."""

    name: str
    original: Callable
    replacement: Any
    per_instance: bool = False


@dataclass
class _Record:
    rebindings: list[Rebinding]
    methods: list[str] = field(default_factory=list)


class GlobalsCache:
    """One globals copy per (user module dict, shared replacements): instances of the same user
    module's classes share it."""

    def __init__(self) -> None:
        self._copies: dict[tuple, dict[str, Any]] = {}

    def get(self, base: dict[str, Any], replaced: dict[str, tuple[Callable, Any]]) -> dict[str, Any]:
        key = (id(base), tuple(sorted((n, id(o), id(r)) for n, (o, r) in replaced.items())))
        if key not in self._copies:
            self._copies[key] = globals_with(base, replaced)
        return self._copies[key]


def rebind(module: nn.Module, rebindings: list[Rebinding], cache: GlobalsCache | None = None) -> list[str]:
    """Install instance-level bound methods on ``module`` for ``rebindings``; returns the method
    names rebound. Methods whose globals do not map a rebinding's name to its original are left."""
    cache = GlobalsCache() if cache is None else cache
    per_instance = any(r.per_instance for r in rebindings)
    done: list[str] = []
    for method, fn in user_methods(type(module)):
        wanted = {
            r.name: r for r in rebindings if fn.__globals__.get(r.name) is r.original and uses(fn, r.original)
        }
        if not wanted:
            continue
        replaced = {
            name: (r.original, r.replacement(module) if r.per_instance else r.replacement)
            for name, r in wanted.items()
        }
        globals_ = (
            globals_with(fn.__globals__, replaced) if per_instance else cache.get(fn.__globals__, replaced)
        )
        module.__dict__[method] = types.MethodType(copy_function(fn, globals_), module)
        done.append(method)
    if done:
        record = module.__dict__.get(_RECORD)
        if record is None:
            record = module.__dict__[_RECORD] = _Record([])
        record.rebindings += rebindings
        record.methods += [m for m in done if m not in record.methods]
        if per_instance:
            module.__dict__["__deepcopy__"] = types.MethodType(_deepcopy_rebound, module)
    return done


def unbind(module: nn.Module) -> None:
    """Remove every instance-level method :func:`rebind` installed on ``module``."""
    record = module.__dict__.pop(_RECORD, None)
    if record is None:
        return
    for method in record.methods:
        module.__dict__.pop(method, None)
    module.__dict__.pop("__deepcopy__", None)


def _deepcopy_rebound(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """Deepcopy of an instance with per-instance rebindings: copy its state as nn.Module's default
    deepcopy does, then rebind the copy to replacements resolved on the copy."""
    record: _Record = self.__dict__[_RECORD]
    cls = type(self)
    new = cls.__new__(cls)
    memo[id(self)] = new
    skip = {*record.methods, "__deepcopy__", _RECORD}
    state = {k: v for k, v in self.__dict__.items() if k not in skip}
    new.__dict__.update(copy.deepcopy(state, memo))
    rebind(new, list(record.rebindings))
    return new
