"""The frames ``sparsefuse regress`` measures with, and a line saying which they are.

Latency depends on the inputs (a sparse LiDAR branch on one point costs nothing), so regress
never sizes a dynamic input by guessing. In order of preference:
1. ``--inputs FRAMES.npz`` (one array per graph input);
2. the compile's verify frames, when the ONNX sits in (or is) a compile directory:
   OUT/verify/inputs.json, else OUT/verify/frames/<i>_inputs.json;
3. synthetic frames for a preset-shaped graph (inputs ``images`` and ``points``; the image
   size names the preset) at the preset's typical point count;
4. seeded random tensors when every input dimension is static (their size is the graph's own).
Anything else is refused with a request for ``--inputs``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from sparsefuse.errors import SparsefuseError

SYNTHETIC_FRAMES = 3  # different scenes at the same point count: the median sees more than one
_FRAME_FILE = re.compile(r"^(\d+)_inputs\.json$")


@dataclass(frozen=True)
class Frames:
    """Feeds for every graph input, one dict per frame; runs cycle through them."""

    feeds: tuple[dict[str, np.ndarray], ...]
    source: str  # printed on stdout and in regress.md

    def key_shapes(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Input shapes for the baseline key: frame 0's, plus ``name@i`` where frame i differs
        (another set of frames is another workload)."""
        first = {n: tuple(int(d) for d in a.shape) for n, a in self.feeds[0].items()}
        shapes = dict(first)
        for i, feed in enumerate(self.feeds[1:], start=1):
            for name, array in feed.items():
                if tuple(array.shape) != first[name]:
                    shapes[f"{name}@{i}"] = tuple(int(d) for d in array.shape)
        return tuple(sorted(shapes.items()))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (initializers listed as inputs are left out)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in dims]


def _points_range(feeds: tuple[dict[str, np.ndarray], ...]) -> str:
    counts = [int(f["points"].shape[0]) for f in feeds if "points" in f and f["points"].ndim >= 1]
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    return f", points {low}" if low == high else f", points {low}–{high}"


def _select(feeds: list[dict[str, np.ndarray]], model: onnx.ModelProto, where: str) -> tuple[dict, ...]:
    """Each frame reduced to the graph's inputs; a frame lacking one is refused."""
    names = [i.name for i in graph_inputs(model)]
    for feed in feeds:
        missing = [n for n in names if n not in feed]
        if missing:
            raise SparsefuseError(
                f"{where} lack the model input(s) {', '.join(missing)}",
                "pass --inputs FRAMES.npz with one array per model input",
            )
    return tuple({n: np.ascontiguousarray(feed[n]) for n in names} for feed in feeds)


def frames_from_npz(path: Path, model: onnx.ModelProto) -> Frames:
    """One frame from an npz with one array per graph input (a bundle's golden/inputs.npz)."""
    from sparsefuse.compiler.cli_inputs import check_feeds, load_npz

    feed = load_npz(path, "--inputs")  # refuses a folder, a non-npz, object arrays (never unpickled)
    feeds = _select([feed], model, f"inputs {path}")
    check_feeds(model, feeds, f"--inputs {path}")  # dtype, rank, static dims: before ORT sees them
    return Frames(feeds, f"--inputs file {path} (1 frame{_points_range(feeds)})")


def verify_frames_dir(onnx_path: Path) -> Path | None:
    """The compile directory whose verify frames belong to ``onnx_path`` (OUT/lowered/x.onnx, or a
    model directly in OUT), or None."""
    for out in (onnx_path.parent, onnx_path.parent.parent):
        verify = out / "verify"
        if (verify / "inputs.json").is_file() or any((verify / "frames").glob("*_inputs.json")):
            return out
    return None


def read_verify_frames(out: Path) -> list[dict[str, np.ndarray]]:
    """OUT/verify/inputs.json (all frames), else OUT/verify/frames/<i>_inputs.json in index order."""
    from sparsefuse.compiler.bundle import read_polygraphy_feeds

    whole = out / "verify" / "inputs.json"
    if whole.is_file():
        return read_polygraphy_feeds(whole)
    folder = out / "verify" / "frames"
    files = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _FRAME_FILE.match(p.name))]
    return [feed for _, path in sorted(files) for feed in read_polygraphy_feeds(path)]


def frames_from_compile(out: Path, model: onnx.ModelProto) -> Frames | None:
    feeds = read_verify_frames(out)
    if not feeds:
        return None
    selected = _select(feeds, model, f"the verify frames of {out}")
    count = f"{len(selected)} frame{'s' if len(selected) != 1 else ''}"
    return Frames(selected, f"verify frames of {out} ({count}{_points_range(selected)})")


def preset_of_graph(model: onnx.ModelProto):  # -> Preset | None (models imports torch: lazily)
    """The preset whose input layout the graph has: inputs ``images`` [Ncam,3,H,W] (static H, W equal
    to the preset's image size) and ``points`` [P,4]."""
    inputs = {i.name: _dims(i) for i in graph_inputs(model)}
    if set(inputs) != {"images", "points"}:
        return None
    images, points = inputs["images"], inputs["points"]
    if len(images) != 4 or len(points) != 2 or not all(isinstance(d, int) for d in images[1:]):
        return None
    from sparsefuse.models.presets import PRESETS

    for preset in PRESETS.values():
        if images[1] == 3 and tuple(images[2:]) == preset.image_size:
            return preset
    return None


def synthetic_frames(model: onnx.ModelProto, preset, count: int = SYNTHETIC_FRAMES) -> Frames:
    """``count`` seeded frames for a preset-shaped graph at the preset's typical point count."""
    from sparsefuse.models.frames import random_frame

    cameras = _dims(next(i for i in graph_inputs(model) if i.name == "images"))[0]
    num_cameras = cameras if isinstance(cameras, int) else None
    points = preset.num_points_typical
    feeds = tuple(
        {k: v.numpy() for k, v in random_frame(preset, seed, points, num_cameras).items()}
        for seed in range(count)
    )
    return Frames(feeds, f"synthetic {preset.name} frames at {points} points ({count} frames)")


def static_random_frames(model: onnx.ModelProto, seed: int = 0) -> Frames | None:
    """Seeded random tensors when every input dimension is static, else None."""
    inputs = graph_inputs(model)
    if any(not isinstance(d, int) for i in inputs for d in _dims(i)):
        return None
    from sparsefuse.compiler.regress.measure import make_feeds

    feeds = make_feeds(model, seed=seed)
    shapes = ", ".join(f"{n}{list(a.shape)}" for n, a in feeds.items())
    return Frames((feeds,), f"random inputs at the graph's static shapes ({shapes})")


def _refusal(model: onnx.ModelProto, path: Path) -> SparsefuseError:
    dynamic = ", ".join(
        f"{i.name}{_dims(i)}" for i in graph_inputs(model) if not all(isinstance(d, int) for d in _dims(i))
    )
    return SparsefuseError(
        f"{path} has dynamic inputs ({dynamic}) and no compile directory's verify frames beside it; "
        "a synthetic size would measure a different workload",
        "pass --inputs FRAMES.npz (one array per model input, e.g. a bundle's golden/inputs.npz)",
    )


def resolve_frames(
    model: onnx.ModelProto, onnx_path: Path, inputs_npz: Path | None, baseline_path: Path | None = None
) -> Frames:
    """The frames to measure ``model`` (and the baseline beside it) with; see the module docstring."""
    if inputs_npz is not None:
        return frames_from_npz(inputs_npz, model)
    for path in (onnx_path, baseline_path):
        out = verify_frames_dir(path) if path is not None else None
        frames = frames_from_compile(out, model) if out is not None else None
        if frames is not None:
            return frames
    preset = preset_of_graph(model)
    if preset is not None:
        return synthetic_frames(model, preset)
    frames = static_random_frames(model)
    if frames is None:
        raise _refusal(model, onnx_path)
    return frames


def check_fits(frames: Frames, model: onnx.ModelProto, where: Path) -> None:
    """The baseline model must take the candidate's inputs (both are fed the same frames)."""
    missing = [i.name for i in graph_inputs(model) if i.name not in frames.feeds[0]]
    if missing:
        raise SparsefuseError(
            f"baseline {where} takes input(s) {', '.join(missing)} that the candidate's frames lack",
            "compare models with the same inputs",
        )
