"""Fixed frame sets: generate once (in parallel), cache to one .npz, load back bit-identical.

Images are stored as uint8 (the generator quantizes them to 1/255, so this is lossless).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sparsefuse.atomic import atomic_path
from sparsefuse.errors import SparsefuseError
from sparsefuse.models.rig import Rig
from sparsefuse.models.synthetic.generate import SyntheticConfig, make_frame, rig_grid

GENERATOR_VERSION = 4  # bump whenever the generator's output changes (invalidates caches)
FRAME_KEYS = ("images", "points", "gt_boxes", "gt_labels", "seg_masks", "night", "seed")


def _one(args: tuple[int, Rig, SyntheticConfig]) -> dict[str, np.ndarray]:
    seed, rig, config = args
    return make_frame(seed, rig, rig_grid(rig), config)


def generate_frames(
    seeds: list[int], rig: Rig, config: SyntheticConfig | None = None, workers: int = 1
) -> list[dict[str, np.ndarray]]:
    """Frames for ``seeds`` in order; ``workers`` > 1 renders in that many processes."""
    config = config or SyntheticConfig()
    jobs = [(int(s), rig, config) for s in seeds]
    if workers <= 1 or len(jobs) < 4:
        return [_one(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_one, jobs, chunksize=8))


def cache_key(seeds: list[int], rig: Rig, config: SyntheticConfig) -> str:
    """Content key of a frame set: seeds, rig and generator config (and the generator version)."""
    blob = json.dumps(
        {
            "seeds": [int(s) for s in seeds],
            "rig": rig.to_dict(),
            "config": asdict(config),
            "version": GENERATOR_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_frames(path: str | Path, frames: list[dict[str, np.ndarray]]) -> Path:
    arrays: dict[str, np.ndarray] = {"count": np.int64(len(frames))}
    for i, f in enumerate(frames):
        for key in FRAME_KEYS:
            value = f[key]
            if key == "images":
                value = np.round(value * 255.0).astype(np.uint8)
            arrays[f"{i}/{key}"] = value
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)


def load_frames(path: str | Path) -> list[dict[str, np.ndarray]]:
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise SparsefuseError(
            f"cannot read frame cache {path}: {exc}", "delete it; it is regenerated"
        ) from None
    frames = []
    for i in range(int(data["count"])):
        f = {key: data[f"{i}/{key}"] for key in FRAME_KEYS}
        f["images"] = (f["images"].astype(np.float32) / np.float32(255.0)).astype(np.float32)
        frames.append(f)
    return frames


def cached_frames(
    seeds: list[int], rig: Rig, cache_dir: str | Path, config: SyntheticConfig | None = None, workers: int = 1
) -> list[dict[str, np.ndarray]]:
    """Load the frame set from ``cache_dir`` if cached with the same key; else generate and cache it."""
    config = config or SyntheticConfig()
    path = Path(cache_dir) / f"frames-{cache_key(seeds, rig, config)}.npz"
    if path.is_file():
        return load_frames(path)
    frames = generate_frames(seeds, rig, config, workers)
    save_frames(path, frames)
    return frames
