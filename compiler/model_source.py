"""ModelSource: one model, its spec, its frames and its conversion, for every stage.

Built from a preset (seeded synthetic frames, the preset's built-in spec) or from a user's model
(a factory or a Python object, given frames, an inferred or given spec). The pipeline, the
sparsity stage, verify and the backends read the model only through it:
- ``original``: the model as the user wrote it (spconv inside) with its weights, the reference
  verify compares against;
- ``converted``: a copy with every third-party module rewritten into our ops (passes/convert),
  what is exported and pruned;
- frames for export, verification (never the export frame where there are two or more),
  calibration and profiling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sparsefuse.compiler import model_interface as mi
from sparsefuse.errors import SparsefuseError
from sparsefuse.spec import ModelSpec, logit_like_identity_outputs

Frame = dict[str, np.ndarray]
VERIFY_POINT_SCALES = (0.6, 0.85, 1.2, 0.7, 1.1)  # preset verify frames: point counts unlike export's


class FrameSource(Protocol):
    """Where a model's frames come from."""

    def export_frame(self) -> Frame: ...
    def verify_frames(self, count: int) -> list[tuple[dict[str, Any], Frame]]: ...
    def calibration_frames(self, count: int) -> list[Frame]: ...


@dataclass(frozen=True)
class PresetFrames:
    """Seeded synthetic frames of a preset (models/frames.py): export = ``seed``, verify = seed+1..,
    calibration = seed+1000..; verify frames change the point count."""

    preset: Any
    seed: int

    def frame(self, seed: int, num_points: int | None = None) -> Frame:
        from sparsefuse.models.frames import random_frame

        frame = random_frame(self.preset, seed, num_points=num_points)
        return {name: np.ascontiguousarray(frame[name].numpy(), dtype=np.float32)
                for name in ("images", "points")}

    def export_frame(self) -> Frame:
        return self.frame(self.seed)

    def verify_frames(self, count: int) -> list[tuple[dict[str, Any], Frame]]:
        export_points = int(self.export_frame()["points"].shape[0])
        frames = []
        for i in range(count):
            seed = self.seed + 1 + i
            num_points = max(16, int(export_points * VERIFY_POINT_SCALES[i % len(VERIFY_POINT_SCALES)]) + i)
            frame = self.frame(seed, num_points=num_points)
            frames.append(({"seed": seed, "num_points": int(frame["points"].shape[0]),
                            "export_num_points": export_points}, frame))
        return frames

    def calibration_frames(self, count: int) -> list[Frame]:
        return [self.frame(self.seed + 1000 + i) for i in range(count)]


@dataclass(frozen=True)
class GivenFrames:
    """The user's frames: the first exports; verification uses the others (all of them before
    repeating); calibration uses them in order."""

    frames: tuple[Frame, ...]
    spec: ModelSpec

    def export_frame(self) -> Frame:
        return self.frames[0]

    def verify_frames(self, count: int) -> list[tuple[dict[str, Any], Frame]]:
        pool = list(range(1, len(self.frames))) or [0]
        picked = [pool[i % len(pool)] for i in range(min(count, len(pool)))]
        return [(self.info(i), self.frames[i]) for i in picked]

    def calibration_frames(self, count: int) -> list[Frame]:
        return [self.frames[i % len(self.frames)] for i in range(min(count, len(self.frames)))]

    def info(self, index: int) -> dict[str, Any]:
        """Frame index and its dynamic sizes (e.g. num_points), as verify.json and the report show."""
        sizes = {dim: int(self.frames[index][item.name].shape[axis])
                 for item in self.spec.inputs for axis, dim in item.dynamic}
        info: dict[str, Any] = {"frame": index, "dynamic": sizes,
                                "export_frame": index == 0}
        if "num_points" in sizes:
            info["num_points"] = sizes["num_points"]
        return info


class ModelSource:
    """One model for every stage; see the module docstring. ``build`` makes the original model
    (weights loaded) lazily, so a fully cached recompile never builds it."""

    def __init__(self, label: str, spec: ModelSpec, build: Callable[[], Any], frames: FrameSource,
                 convert_options: Mapping[str, Any] | None = None, is_preset: bool = False) -> None:
        self.label = label
        self.spec = spec
        self._build = build
        self.frames = frames
        self.convert_options = dict(convert_options or {})
        self.is_preset = is_preset

    @functools.cached_property
    def original(self) -> Any:
        return self._build().eval()

    @functools.cached_property
    def conversion(self) -> tuple[Any, Any]:
        """(converted model, ConversionReport). Sample frames let the bev_pool converter decide
        whether the camera geometry is static."""
        from sparsefuse.passes.convert import convert

        spec = self.spec
        sample = [mi.torch_inputs(spec, f) for f in self._sample_frames(4)]
        return convert(self.original, sample, self.convert_options)

    @property
    def converted(self) -> Any:
        return self.conversion[0]

    def _sample_frames(self, count: int) -> list[Frame]:
        if isinstance(self.frames, GivenFrames):
            return list(self.frames.frames[:count])
        return [self.frames.export_frame()]

    def forward(self, model: Any, frame: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Named numpy outputs of ``model`` on one frame (spec order)."""
        spec = self.spec
        outs = mi.named_outputs(mi.run_forward(model, frame, spec), spec.output_names)
        if list(outs) != list(spec.output_names):
            outs = dict(zip(spec.output_names, outs.values(), strict=True))
        return {name: t.detach().cpu().numpy() for name, t in outs.items()}

    def torch_forward(self, model: Any, frame: Mapping[str, Any]) -> Any:
        """The raw forward on a frame of tensors or arrays (the sparsity stage's callback)."""
        return model(**mi.torch_inputs(self.spec, frame))

    def modality_of(self, name: str) -> str | None:
        """A parameter's modality tag: the spec's prefixes where it declares any, else the
        presets' layout (first path component: camera, lidar, fusion, head; else "other")."""
        if self.spec.modalities:
            return self.spec.modality_of(name)
        from sparsefuse.passes.sparsity.discover import modality_of

        return modality_of(name)

    def digests(self) -> dict[str, str]:
        """SHA-256 of the model (code + weights) and of the frames, for the stage cache keys."""
        if self.is_preset:
            return {}
        return {"model": self._model_digest(), "frames": frames_digest(self.frames.frames)}  # type: ignore[attr-defined]

    def _model_digest(self) -> str:
        import hashlib
        import inspect

        digest = hashlib.sha256(self.label.encode())
        try:
            digest.update(Path(inspect.getfile(type(self.original))).read_bytes())
        except (OSError, TypeError):
            digest.update(type(self.original).__qualname__.encode())
        for name, tensor in sorted(self.original.state_dict().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
        return digest.hexdigest()

    def warnings(self) -> list[str]:
        names = logit_like_identity_outputs(self.spec)
        if not names:
            return []
        return [f"output(s) {', '.join(names)} look like logits but declare no consumer transform: the "
                "sparsity stage measures distortion on them as they are (declare e.g. sigmoid in the spec)"]


def preset_source(name: str, seed: int = 0, rig: Any = None, weights: Path | None = None) -> ModelSource:
    """A preset through the same interface as a user model."""
    from dataclasses import replace

    from sparsefuse.models.presets import build_model, get_preset, preset_spec

    preset = get_preset(name)
    if rig is not None:
        preset = replace(preset, num_cameras=len(rig.cameras), point_range=rig.point_range)

    def build() -> Any:
        model = build_model(name, rig=rig, seed=seed)
        if weights is not None:
            from sparsefuse.models.train import load_checkpoint

            load_checkpoint(model, weights)
        return model

    return ModelSource(name, preset_spec(name), build, PresetFrames(preset, seed), is_preset=True)


def user_source(model: Any, frames: Sequence[Mapping[str, Any]], spec: ModelSpec | None = None,
                weights: str | Path | None = None, label: str | None = None,
                convert_options: Mapping[str, Any] | None = None) -> ModelSource:
    """A user's model (a module, or a zero-argument factory returning one) with its frames.
    Frames are checked against the forward now, before any expensive work."""
    numpy_frames = tuple(mi.as_numpy_frames(frames))
    built = model() if callable(model) and not hasattr(model, "forward") else model
    if weights is not None:
        mi.load_weights(built, weights)
    # The spec is inferred by running the model once, so it is built now (not lazily).
    resolved = mi.infer_spec(built.eval(), list(numpy_frames), spec)
    return ModelSource(label or type(model).__name__, resolved, lambda: built,
                       GivenFrames(numpy_frames, resolved), convert_options)


def factory_source(ref: mi.ModelRef, frames_dir: Path | None, weights: Path | None,
                   convert_options: Mapping[str, Any] | None = None) -> ModelSource:
    """A user's model named on the command line: ``file.py:factory`` or ``module:factory``."""
    if frames_dir is None:
        raise SparsefuseError(f"--model {ref.text} needs frames", "pass --frames DIR (one .npz per frame, "
                              "keys = the forward's argument names)")
    frames = mi.read_frames_dir(frames_dir)
    module, spec = mi.call_factory(mi.load_factory(ref), ref.text)
    return user_source(module, frames, spec, weights, label=ref.text, convert_options=convert_options)


def frames_digest(frames: Sequence[Mapping[str, np.ndarray]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for frame in frames:
        for name in sorted(frame):
            array = np.ascontiguousarray(frame[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def source_from_config(config: Any, rig: Any = None) -> ModelSource:
    """The ModelSource a CompileConfig names (a preset, or a user factory with its frames)."""
    if config.is_preset:
        if rig is None and config.rig is not None:
            from sparsefuse.models.rig import load_rig

            rig = load_rig(config.rig)
        return preset_source(config.model, config.seed, rig, config.weights)
    return factory_source(mi.parse_model_ref(config.model), config.frames, config.weights)
