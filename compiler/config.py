"""CompileConfig: what one ``sparsefuse compile`` is asked to do, validated once at the edge."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsefuse.errors import SparsefuseError

if TYPE_CHECKING:
    from sparsefuse.passes.precision.config import PrecisionConfig
    from sparsefuse.passes.sparsity.config import SparsityConfig

MAX_VERIFY_FRAMES = 64
SPARSITY_FILE_SUFFIXES = (".json", ".toml")


@dataclass(frozen=True)
class CompileConfig:
    """model: preset name, ``file.py:factory`` or ``module:factory`` (or a label for a Python
    object given to the API); target: target tag; out: artifact directory; rig: rig JSON (presets
    only; None = the preset's built-in rig); seed: a preset's initial weights and export frame;
    verify_frames: frames checked; weights: safetensors (or, for a user model, a weights-only
    .pth) checkpoint (None = the model's own init); sparsity: the sparsity stage's options (None =
    no sparsity stage); frames: a user model's frames folder (one .npz per frame); precision: the
    precision stage's options (None = fp32, no precision stage)."""

    model: str
    target: str
    out: Path
    rig: Path | None = None
    seed: int = 0
    verify_frames: int = 3
    weights: Path | None = None
    sparsity: SparsityConfig | None = None
    frames: Path | None = None
    precision: PrecisionConfig | None = None

    @property
    def is_preset(self) -> bool:
        from sparsefuse.models.presets import PRESETS

        return self.model in PRESETS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = self.out.as_posix()
        data["rig"] = self.rig.as_posix() if self.rig else None
        data["weights"] = self.weights.as_posix() if self.weights else None
        data["frames"] = self.frames.as_posix() if self.frames else None
        if self.precision is None:  # fp32: the same config (and cache keys) as before the stage existed
            del data["precision"]
        return data  # asdict turned sparsity into a plain dict (or None)

    def key_dict(self) -> dict[str, Any]:
        """The fields that change artifacts (``out`` does not)."""
        data = self.to_dict()
        del data["out"]
        return data

    def model_key_dict(self) -> dict[str, Any]:
        """The fields that change the torch model and the export frame."""
        data = self.to_dict()
        return {"model": self.model, "rig": data["rig"], "seed": self.seed, "weights": data["weights"],
                "frames": data["frames"]}

    def sparsity_key_dict(self) -> dict[str, Any]:
        """The fields that change the sparsity stage: the torch model and the sparsity options."""
        return {**self.model_key_dict(), "sparsity": self.to_dict()["sparsity"]}

    def precision_key_dict(self) -> dict[str, Any]:
        """The fields that change the precision stage: the model (its calibration frames) and the
        precision options."""
        return {**self.model_key_dict(), "precision": self.to_dict().get("precision")}


def make_config(
    model: str, target: str, out: str | os.PathLike[str], rig: str | os.PathLike[str] | None = None,
    seed: int = 0, verify_frames: int = 3, weights: str | os.PathLike[str] | None = None,
    sparsity: str | None = None, frames: str | os.PathLike[str] | None = None, python_model: bool = False,
    precision: str = "fp32", calibrator: str | None = None, calib_frames: int | None = None,
    int8_sensitivity: float | None = None,
) -> CompileConfig:
    """Validate every field; a bad one raises SparsefuseError naming it and what is allowed.
    ``sparsity``: a spec ``"budget=params=0.5,allocator=rdprune,calib=4"`` or a JSON / TOML file
    with the same keys. ``python_model``: ``model`` is only a label (the API was given an object)."""
    preset = False if python_model else _check_model(model)
    target = _check_target(target)
    precision_config = _check_precision(precision, calibrator, calib_frames, target, int8_sensitivity)
    sparsity_config = _check_sparsity(sparsity) if sparsity is not None else None
    if rig is not None and not preset:
        raise SparsefuseError("--rig applies to the built-in presets only",
                              "a user model carries its own geometry; drop --rig")
    if frames is not None and preset:
        raise SparsefuseError("--frames applies to user models only",
                              "presets make their own frames; drop --frames, or pass --model file.py:factory")
    if frames is None and not preset and not python_model:
        raise SparsefuseError(f"--model {model} needs frames",
                              "pass --frames DIR (one .npz per frame, keys = the forward's argument names)")
    rig_path = _check_rig(rig) if rig is not None else None
    weights_path = _check_weights(weights, preset) if weights is not None else None
    frames_path = _check_frames(frames) if frames is not None else None
    if not isinstance(seed, int) or seed < 0:
        raise SparsefuseError(f"--seed must be a non-negative integer, got {seed!r}", "e.g. --seed 0")
    if not isinstance(verify_frames, int) or not 1 <= verify_frames <= MAX_VERIFY_FRAMES:
        raise SparsefuseError(
            f"--verify-frames must be an integer in [1, {MAX_VERIFY_FRAMES}], got {verify_frames!r}",
            "the default is 3 fresh frames",
        )
    out_path = _check_out(Path(out))
    return CompileConfig(model, target, out_path, rig_path, seed, verify_frames, weights_path,
                         sparsity_config, frames_path, precision_config)


def _check_precision(precision: str, calibrator: str | None, calib_frames: int | None,
                     target: str, int8_sensitivity: float | None = None) -> PrecisionConfig | None:
    """None for fp32 (no precision stage); the target must be able to run the precision."""
    from sparsefuse.passes.precision.config import (
        DEFAULT_CALIB_FRAMES,
        check_target_precision,
        make_precision_config,
    )
    from sparsefuse.targets.registry import get_target

    config = make_precision_config(precision, calibrator,
                                   DEFAULT_CALIB_FRAMES if calib_frames is None else calib_frames,
                                   int8_sensitivity=int8_sensitivity)
    if config.precision == "fp32":
        if calib_frames is not None:
            raise SparsefuseError("--calib-frames applies to --precision fp16 / int8",
                                  "drop --calib-frames, or pass --precision fp16 or int8")
        return None
    check_target_precision(config.precision, get_target(target))
    return config


def _check_model(name: str) -> bool:
    """True for a preset; a user reference is checked cheaply (its file exists), not imported."""
    from sparsefuse.compiler.model_interface import parse_model_ref

    return parse_model_ref(name).is_preset


def _check_frames(frames: str | os.PathLike[str]) -> Path:
    path = Path(frames)
    if not path.is_dir():
        raise SparsefuseError(f"frames folder not found: {path}", "--frames takes a folder of .npz files")
    if not any(path.glob("*.npz")):
        raise SparsefuseError(f"no .npz frames in {path}",
                              "save each frame with numpy.savez(path, **{argument name: array})")
    return path.resolve()


def _check_target(tag: str) -> str:
    """Any registry tag, or a user target TOML (kept as its absolute path)."""
    from sparsefuse.targets.registry import get_target

    get_target(tag)  # raises SparsefuseError listing the known tags
    path = Path(tag)
    return path.resolve().as_posix() if path.suffix == ".toml" and path.is_file() else tag


def _check_sparsity(spec: str) -> SparsityConfig:
    """The sparsity options from a spec string or a JSON / TOML file of the same keys."""
    from sparsefuse.passes.sparsity.config import config_from_options, parse_spec

    path = Path(spec)
    if "=" in spec or path.suffix not in SPARSITY_FILE_SUFFIXES:  # budget=latency=t.json is a spec
        return parse_spec(spec)
    if path.is_dir():
        raise SparsefuseError(f"sparsity file {path} is a directory",
                              "pass a .json / .toml file or a spec like budget=params=0.5,calib=4")
    if not path.is_file():
        raise SparsefuseError(f"sparsity file not found: {path}",
                              "pass an existing .json / .toml file or a spec like budget=params=0.5,calib=4")
    options = _read_options(path)
    budget = str(options.pop("budget", "params=0.5"))
    return config_from_options(budget, **{k.replace("-", "_"): v for k, v in options.items()})


def _read_options(path: Path) -> dict[str, Any]:
    import json

    import tomllib

    try:
        text = path.read_text()
        options = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise SparsefuseError(f"cannot read sparsity file {path}: {exc}",
                              "give a JSON object / TOML table of sparsity options (budget, calib, ...)") \
            from None
    if not isinstance(options, dict):
        raise SparsefuseError(f"sparsity file {path} is not a JSON object", 'e.g. {"budget": "params=0.5"}')
    return options


def _check_rig(rig: str | os.PathLike[str]) -> Path:
    from sparsefuse.models.rig import load_rig

    path = Path(rig)
    if not path.is_file():
        raise SparsefuseError(f"rig file not found: {path}", "pass an existing rig JSON with --rig")
    load_rig(path)  # raises SparsefuseError naming the malformed field
    return path.resolve()


def _check_weights(weights: str | os.PathLike[str], preset: bool = True) -> Path:
    """The checkpoint must exist and be a readable safetensors file (a user model may also take a
    weights-only .pth); whether it fits the model is checked when the model is built."""
    from safetensors import SafetensorError, safe_open

    from sparsefuse.compiler.model_interface import WEIGHT_SUFFIXES

    path = Path(weights)
    if not path.is_file():
        raise SparsefuseError(f"weights file not found: {path}",
                              "pass a .safetensors checkpoint written by `sparsefuse train` (--weights)")
    if not preset:
        if path.suffix not in WEIGHT_SUFFIXES:
            raise SparsefuseError(f"weights file {path.name} has an unknown type",
                                  f"--weights takes one of {', '.join(WEIGHT_SUFFIXES)}")
        if path.suffix != ".safetensors":
            return path.resolve()
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise SparsefuseError(f"cannot read weights {path}: {str(exc).splitlines()[0] if str(exc) else exc}",
                              "--weights must be a safetensors file") from None
    return path.resolve()


def _check_out(out: Path) -> Path:
    """Create ``out`` if needed and prove it writable with a probe file."""
    if out.exists() and not out.is_dir():
        raise SparsefuseError(f"--out {out} exists and is not a directory", "choose a directory path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SparsefuseError(
            f"cannot write to output directory {out}: {exc.strerror or exc}",
            "choose an output directory you can write to (--out)",
        ) from None
    return out.resolve()
