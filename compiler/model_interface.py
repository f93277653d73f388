"""The model interface: what the user names -> a model sparsefuse can compile.

One place owns it all, and the pipeline, the sparsity stage and the backends go through it:
- model references: a preset name, ``path/to/file.py:factory`` or ``package.module:factory``
  (the factory returns the module, or (module, ModelSpec));
- frames: an iterable of dicts of named arrays (Python API) or a folder of ``.npz`` files (CLI),
  checked against the forward's arguments (keys, dtypes, ranks) before any expensive work;
- weights: safetensors, or a ``.pth`` state dict read with ``torch.load(weights_only=True)``
  (mmdet3d / OpenPCDet checkpoints: the ``state_dict`` / ``model`` / ``model_state`` entry);
- the spec (sparsefuse/spec.py), inferred from the signature and the frames where not given;
- conversion of third-party modules (passes/convert) into our ops.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.errors import SparsefuseError
from sparsefuse.spec import InputSpec, ModelSpec, OutputSpec, validate_spec

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
STATE_DICT_KEYS = ("state_dict", "model", "model_state", "module")
MAX_FRAMES = 10_000
MIN_DYNAMIC_SIZE = 2  # torch.export specializes sizes 0 and 1
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Frame = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelRef:
    """What ``--model`` named. kind: "preset" | "file" | "module"; location: the preset name, the
    file path or the dotted module; factory: the callable's name ("" for presets)."""

    text: str
    kind: str
    location: str
    factory: str = ""

    @property
    def is_preset(self) -> bool:
        return self.kind == "preset"


def parse_model_ref(text: str) -> ModelRef:
    """A preset name, ``file.py:factory`` or ``package.module:factory``; checked cheaply (the
    file exists, names are identifiers) without importing anything."""
    from sparsefuse.models.presets import PRESETS, list_presets

    forms = "a preset (" + ", ".join(list_presets()) + "), path/to/model.py:factory or package.module:factory"
    if text in PRESETS:
        return ModelRef(text, "preset", text)
    if ":" not in text:
        raise SparsefuseError(f"unknown model {text!r}", f"--model takes {forms}")
    location, factory = text.rsplit(":", 1)
    if not _IDENT.match(factory):
        raise SparsefuseError(f"--model {text!r}: {factory!r} is not a function name",
                              f"--model takes {forms}")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise SparsefuseError(f"model file not found: {location}", f"--model takes {forms}")
        return ModelRef(text, "file", path.resolve().as_posix(), factory)
    if not all(_IDENT.match(part) for part in location.split(".")):
        raise SparsefuseError(f"--model {text!r}: {location!r} is neither a .py file nor a module name",
                              f"--model takes {forms}")
    return ModelRef(text, "module", location, factory)


def load_factory(ref: ModelRef) -> Any:
    """Import the factory callable named by ``ref`` (a file is imported as a module of its own,
    with its folder on sys.path so that it can import its siblings)."""
    try:
        if ref.kind == "file":
            path = Path(ref.location)
            name = "sparsefuse_user_" + hashlib.sha256(ref.location.encode()).hexdigest()[:12]
            module = sys.modules.get(name)
            if module is None:
                if str(path.parent) not in sys.path:
                    sys.path.append(str(path.parent))
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # classes defined there must be findable (deepcopy, pickle)
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(ref.location)
    except SparsefuseError:
        raise
    except Exception as exc:  # the user's code: summarise, never a traceback
        raise SparsefuseError(f"cannot import {ref.location}: {_exception_line(exc)}",
                              "run `python -c 'import ...'` on it to see the full error") from None
    factory = getattr(module, ref.factory, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise SparsefuseError(f"{ref.location} has no callable {ref.factory!r}",
                              f"callables there: {', '.join(found) or 'none'}")
    return factory


def call_factory(factory: Any, ref_text: str) -> tuple[Any, ModelSpec | None]:
    """(module, spec or None) from the factory's result: a module, or (module, ModelSpec)."""
    import torch

    try:
        result = factory()
    except Exception as exc:
        raise SparsefuseError(f"the model factory {ref_text} failed: {_exception_line(exc)}",
                              "call it in Python to see the full error") from None
    spec = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], ModelSpec):
        result, spec = result
    if not isinstance(result, torch.nn.Module):
        raise SparsefuseError(f"the model factory {ref_text} returned {type(result).__name__}",
                              "return a torch.nn.Module, or (module, sparsefuse.ModelSpec)")
    return result, spec


def _exception_line(exc: BaseException) -> str:
    """``Type: first line`` plus the deepest frame of user code (file:line)."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "site-packages" not in filename and "/sparsefuse/" not in filename and "importlib" not in filename:
            where = f" at {Path(filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{type(exc).__name__}: {first}{where}"


# --- weights ---------------------------------------------------------------------------------

def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a safetensors file or a weights-only torch checkpoint, by parameter name."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SparsefuseError(f"weights file not found: {path}",
                              f"--weights takes one of {', '.join(WEIGHT_SUFFIXES)}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise SparsefuseError(f"weights file {path.name} has an unknown type",
                              f"--weights takes one of {', '.join(WEIGHT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SparsefuseError(f"cannot read weights {path}: {_exception_line(exc)}",
                                  "it must be a safetensors file") from None
    try:
        with warnings.catch_warnings():  # torch warns (one more stderr line) before refusing a pickle
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, ...
        raise SparsefuseError(f"cannot read weights {path}: {_exception_line(exc)}",
                              "give a state dict saved with torch.save(model.state_dict(), ...); "
                              "objects other than tensors and plain containers are refused") from None
    return _state_dict_of(obj, path)


def _state_dict_of(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            tensors = isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values())
            if tensors and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SparsefuseError(f"{path} holds no state dict",
                              "expected tensors by name, at the top or under one of "
                              + ", ".join(STATE_DICT_KEYS))
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: Any, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (strict: every parameter and buffer of the state dict).
    Returns {"tensors": n, "path": ...}. Missing, unexpected or mis-shaped keys: one error."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing" + _examples(missing),
                 f"{len(unexpected)} unexpected" + _examples(unexpected),
                 f"{len(shapes)} of another shape" + _examples(
                     [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])]
        raise SparsefuseError(f"checkpoint {Path(path).name} does not match the model: " + ", ".join(parts),
                              "load the checkpoint the model was trained with, or fix the factory's config")
    model.load_state_dict(state, strict=True)
    return {"tensors": len(state), "path": Path(path).as_posix()}


def _examples(names: Sequence[str]) -> str:
    return f" (e.g. {', '.join(names[:2])})" if names else ""


# --- frames ----------------------------------------------------------------------------------

def read_frames_dir(path: str | Path) -> list[Frame]:
    """One frame per ``*.npz`` in ``path`` (sorted by name); keys are the forward's argument
    names. Pickled (object) arrays are refused."""
    folder = Path(path)
    if not folder.is_dir():
        raise SparsefuseError(f"frames folder not found: {folder}",
                              "--frames takes a folder of .npz files, one per frame")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise SparsefuseError(f"no .npz frames in {folder}",
                              "save each frame with numpy.savez(path, **{argument name: array})")
    if len(files) > MAX_FRAMES:
        raise SparsefuseError(f"{len(files)} frames in {folder}", f"give at most {MAX_FRAMES}")
    frames = []
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as data:
                frames.append({k: np.ascontiguousarray(data[k]) for k in data.files})
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise SparsefuseError(f"cannot read frame {file.name}: {_exception_line(exc)}",
                                  "each frame is an .npz of plain numeric arrays (numpy.savez)") from None
    return frames


def as_numpy_frames(frames: Iterable[Mapping[str, Any]]) -> list[Frame]:
    """Frames from the Python API (tensors or arrays) as dicts of contiguous numpy arrays."""
    out = []
    for index, frame in enumerate(frames):
        if not isinstance(frame, Mapping):
            raise SparsefuseError(f"frame {index} is a {type(frame).__name__}",
                                  "each frame is a dict of named tensors or arrays")
        converted = {}
        for key, value in frame.items():
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            array = np.asarray(value)
            if array.dtype == object:
                raise SparsefuseError(f"frame {index} input {key!r} is not a numeric array",
                                      "give tensors or numeric numpy arrays")
            converted[str(key)] = np.ascontiguousarray(array)
        out.append(converted)
        if len(out) > MAX_FRAMES:
            raise SparsefuseError(f"more than {MAX_FRAMES} frames", f"give at most {MAX_FRAMES}")
    if not out:
        raise SparsefuseError("no frames given", "give at least one frame (two or more to verify on "
                                                 "frames not used at export)")
    return out


def forward_arguments(model: Any) -> list[tuple[str, bool]]:
    """(name, required) of the forward's named parameters, in order."""
    params = list(inspect.signature(model.forward).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not named:
        raise SparsefuseError(f"{type(model).__name__}.forward takes no named arguments",
                              "write forward(self, points, ...) with one named argument per input tensor")
    return [(p.name, p.default is inspect.Parameter.empty) for p in named]


def check_frames(spec: ModelSpec, frames: Sequence[Frame]) -> None:
    """Keys, dtypes, ranks and shared dynamic sizes of every frame against the spec."""
    allowed = set(spec.input_names) | set(spec.label_keys)
    for index, frame in enumerate(frames):
        missing = [n for n in spec.input_names if n not in frame]
        extra = sorted(set(frame) - allowed)
        if missing or extra:
            what = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                           f"unexpected {', '.join(extra)}" if extra else ""]))
            raise SparsefuseError(f"frame {index} does not match the forward: {what}",
                                  f"frame keys are the forward's arguments: {', '.join(spec.input_names)}")
        sizes: dict[str, int] = {}
        for item in spec.inputs:
            array = frame[item.name]
            if str(array.dtype) != item.dtype:
                raise SparsefuseError(f"frame {index} input {item.name!r} is {array.dtype}, the model "
                                      f"takes {item.dtype}", f"save it as {item.dtype}")
            if item.rank is not None and array.ndim != item.rank:
                raise SparsefuseError(f"frame {index} input {item.name!r} has rank {array.ndim} "
                                      f"(shape {tuple(array.shape)}), the model takes rank {item.rank}",
                                      "give every frame the same layout")
            for axis, dim in item.dynamic:
                size = int(array.shape[axis])
                if sizes.setdefault(dim, size) != size:
                    raise SparsefuseError(f"frame {index}: inputs sharing dynamic size {dim!r} disagree "
                                          f"({sizes[dim]} vs {size} on {item.name!r})",
                                          "their first axes must have the same length in a frame")


def infer_inputs(
    model: Any, frames: Sequence[Frame], label_keys: Sequence[str] = ()
) -> tuple[InputSpec, ...]:
    """Input specs from the forward's signature and the frames: dtype and rank from the first
    frame; an axis whose size differs between frames is dynamic, and axes that vary together
    share one dim name. With one frame, axis 0 of inputs named like points / voxels / coords is."""
    args = forward_arguments(model)
    keys = set(frames[0])
    missing = [n for n, required in args if required and n not in keys]
    if missing:
        raise SparsefuseError(f"frame 0 lacks the forward's argument(s) {', '.join(missing)}",
                              f"frame keys are the forward's arguments: {', '.join(n for n, _ in args)}")
    names = [n for n, _ in args if n in keys]
    unknown = sorted(keys - set(names) - set(label_keys))
    if unknown:
        raise SparsefuseError(f"frame 0 has key(s) the forward does not take: {', '.join(unknown)}",
                              f"the forward takes: {', '.join(n for n, _ in args)}")
    groups: dict[tuple[int, ...], str] = {}
    inputs = []
    for name in names:
        shapes = [tuple(f[name].shape) for f in frames if name in f]
        first = frames[0][name]
        dynamic = []
        for axis in range(first.ndim):
            sizes = tuple(s[axis] if axis < len(s) else -1 for s in shapes)
            varies = len(set(sizes)) > 1 or (len(frames) == 1 and axis == 0 and first.ndim >= 2
                                             and _looks_like_a_set(name))
            if varies:
                dim = groups.setdefault(sizes, _dim_name(name, axis, groups))
                dynamic.append((axis, dim))
        inputs.append(InputSpec(name, str(first.dtype), first.ndim, tuple(dynamic)))
    return tuple(inputs)


def _looks_like_a_set(name: str) -> bool:
    return any(word in name.lower() for word in ("point", "voxel", "coord", "pillar"))


def _dim_name(name: str, axis: int, taken: Mapping[Any, str]) -> str:
    lowered = name.lower()
    base = ("num_points" if "point" in lowered else "num_voxels" if "voxel" in lowered or "coord" in lowered
            else f"{name}_dim{axis}")
    dim, n = base, 1
    while dim in taken.values():
        n += 1
        dim = f"{base}_{n}"
    return dim


def named_outputs(outputs: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """A forward's outputs as {name: tensor}: a dict keeps its keys; a tuple/list takes ``names``
    (or out0, out1, ...); a tensor is "output". Nested or non-tensor outputs are refused."""
    import torch

    if isinstance(outputs, torch.Tensor):
        items = [((names or ["output"])[0], outputs)]
    elif isinstance(outputs, Mapping):
        items = [(str(k), v) for k, v in outputs.items()]
    elif isinstance(outputs, (tuple, list)):
        default = [f"out{i}" for i in range(len(outputs))]
        labels = list(names) if names and len(names) == len(outputs) else default
        items = list(zip(labels, outputs, strict=True))
    else:
        items = [("output", outputs)]
    bad = [(k, type(v).__name__) for k, v in items if not isinstance(v, torch.Tensor)]
    if bad or not items:
        what = f"output {bad[0][0]!r} is a {bad[0][1]}" if bad else "the forward returned nothing"
        raise SparsefuseError(f"{what}; sparsefuse exports tensors only",
                              "return a tensor, a tuple or a flat dict of tensors (e.g. x.features, "
                              "not a SparseConvTensor; decode boxes outside the model)")
    return dict(items)


def infer_spec(model: Any, frames: Sequence[Frame], given: ModelSpec | None = None) -> ModelSpec:
    """The spec: ``given`` where it says something, else inferred (inputs from the signature and
    frames, outputs by running the model on the first frame)."""
    label_keys = given.label_keys if given else ()
    inputs = given.inputs if given and given.inputs else infer_inputs(model, frames, label_keys)
    partial = ModelSpec(inputs, given.outputs if given and given.outputs else (OutputSpec("output"),),
                        label_keys=label_keys)
    check_frames(partial, frames)
    if given and given.outputs:
        return validate_spec(replace(given, inputs=inputs))
    names = getattr(model, "output_names", None)
    outputs = named_outputs(run_forward(model, frames[0], partial), names)
    spec = ModelSpec(inputs, tuple(OutputSpec(n) for n in outputs),
                     evaluate=given.evaluate if given else None,
                     modalities=given.modalities if given else (), label_keys=label_keys)
    return validate_spec(spec)


def torch_inputs(spec: ModelSpec, frame: Mapping[str, Any]) -> dict[str, Any]:
    """The frame's forward arguments as CPU tensors, in the spec's order."""
    import torch

    return {n: torch.as_tensor(np.ascontiguousarray(frame[n])) for n in spec.input_names}


def run_forward(model: Any, frame: Mapping[str, Any], spec: ModelSpec) -> Any:
    """One forward with the frame's inputs as keyword arguments (no grad). A failure in the
    user's code is one line naming the file and line."""
    import logging
    import warnings

    import torch

    # Third-party libraries' own notices (spconv's scatter_nd indexing deprecation, torch.fx's
    # is_fx_tracing notice raised by spconv's tensor class) are not the user's business here.
    fx_log = logging.getLogger("torch.fx._symbolic_trace")
    was_disabled, fx_log.disabled = fx_log.disabled, True
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"spconv\.")
            return model(**torch_inputs(spec, frame))
    except SparsefuseError:
        raise
    except Exception as exc:
        raise SparsefuseError(f"the model's forward failed on a frame: {_exception_line(exc)}",
                              "check that the frames match what the forward expects") from None
    finally:
        fx_log.disabled = was_disabled
