"""``sparsefuse prune``: layer-adaptive sparsity for a reference model -> OUT/sparsity/ (plan, curves, plots).

Example: ``sparsefuse prune --model bevfusion-tiny --budget params=0.25 --allocator mmprune4u
--pattern unstructured --calib 8 --out build/prune``. ``--operator obs`` reconstructs the surviving
weights (OBS / SparseGPT) and writes them to OUT/sparsity/weights.safetensors next to plan.json.

Budgets keep a fraction F of the dense cost of the prunable layers: ``params=0.25``, ``flops=0.4``,
or ``latency=table.json@0.6`` (per-layer times, JSON {layer: {"dense@0": ms, "unstructured@0.5": ms}};
F defaults to 0.5 and is printed). An infeasible latency budget is refused before any forward, with
the smallest feasible F. A preset prunes its shipped checkpoint (bevfusion-tiny; bevfusion-base ships
none: seeded weights) on the synthetic benchmark's calibration frames (scene seeds 0:600, the
checkpoint's training split; evaluation uses 100000+).
"""

from __future__ import annotations

import argparse
from typing import Any

from sparsefuse.compiler.threads import add_threads_option

# Calibration scenes of the synthetic driving benchmark: the shipped checkpoint's training split
# (models/checkpoints/README.md); bench/sparsity_table.py evaluates on 100000:100100.
CALIB_SEEDS = "0:600"
DEFAULT_LATENCY_FRACTION = 0.5  # = passes/sparsity/config.py's, kept here to spare --help the import
NONE = ("none", "")  # --checkpoint none / --calib-seeds none: the seeded weights / random frames

# The --help text: the module docstring without its reStructuredText markup.
DESCRIPTION = __doc__.replace("``", "")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune",
        help="allocate and apply layer-wise sparsity (plan.json, curves, plots)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="a preset (e.g. bevfusion-tiny) or your model: path/to/model.py:factory or "
                        "package.module:factory")
    p.add_argument("--frames", default=None, metavar="DIR",
                   help="your model's calibration frames: one .npz per frame, keys = the forward's arguments")
    p.add_argument("--checkpoint", "--weights", dest="checkpoint",
                   help="weights: .safetensors, or for your model a state dict .pth (default: a preset's "
                        "shipped checkpoint, models/checkpoints/<preset>.safetensors, seeded init where "
                        "none ships; your factory's weights; 'none': seeded init)")
    p.add_argument(
        "--budget",
        default="params=0.5",
        help="params=F | flops=F | latency=<table.json>@F: fraction F of the dense cost kept "
             f"(latency without @F keeps {DEFAULT_LATENCY_FRACTION:g}, and says so)",
    )
    p.add_argument("--allocator", default="mmprune4u", help="mmprune4u|rdprune|lamp|uniform|global|erk")
    p.add_argument("--pattern", default="unstructured", help="unstructured|2:4|channel")
    p.add_argument("--calib", type=int, default=8, help="calibration frames")
    p.add_argument("--levels", type=int, default=21, help="candidate levels per layer (grid over [0,1])")
    p.add_argument("--beta", type=float, default=1.0, help="MMPrune4U regularizer weight (0 = RD-Prune)")
    p.add_argument("--modality-weights", default=None, help="e.g. camera=1,lidar=2,fusion=1")
    p.add_argument("--worst-case", action="store_true", help="max over frames instead of the mean")
    p.add_argument("--distortion", default="consumer", choices=("consumer", "raw"),
                   help="measure distortion after each output's consumer transform (the model spec's "
                        "sigmoid / softmax / weighting; default) or on the raw outputs")
    p.add_argument("--synthetic", action="store_true", help="random frames instead of a calibration set")
    p.add_argument("--nm-policy", default="valid", help="valid (C%%4==0) | tensorrt (best-practice sizes)")
    p.add_argument("--permute", action="store_true", help="2:4 channel-permutation search")
    p.add_argument("--operator", default="magnitude",
                   help="within-layer pruning: magnitude (zero weights) | obs (second-order reconstruction "
                        "of the surviving weights from calibration inputs; writes "
                        "sparsity/weights.safetensors)")
    p.add_argument("--obs-percdamp", type=float, default=None,
                   help="OBS dampening: λ = F · mean(diag H) (default 0.01)")
    p.add_argument("--num-points", type=int, default=None, help="LiDAR points per calibration frame")
    p.add_argument(
        "--calib-seeds",
        default=None,
        help=f"synthetic-benchmark scene seeds A:B of a preset's calibration frames (default "
             f"{CALIB_SEEDS}, the calibration split; 'none': seeded random frames from models/frames.py)",
    )
    p.add_argument("--data-cache", default="runs/data", help="frame cache of sparsefuse data/train")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of a preset's initial weights and calibration frames, of synthetic frames "
                        "and of the 2:4 permutation search (default 0)")
    add_threads_option(p, "the sensitivity measurement")
    p.add_argument("--out", required=True, help="output directory (writes OUT/sparsity/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparsefuse.compiler.cli_inputs import check_out_path
    from sparsefuse.compiler.threads import apply_threads, check_threads
    from sparsefuse.models.frames import check_num_points
    from sparsefuse.passes.sparsity.config import config_from_options
    from sparsefuse.passes.sparsity.decide import check_latency_table
    from sparsefuse.passes.sparsity.stage import load_latency_table, run_sparsity_stage

    check_num_points(args.num_points, "--num-points")
    check_threads(args.threads)
    check_out_path(args.out, "--out", is_dir=True)  # before minutes of pruning
    config = config_from_options(
        args.budget,
        allocator=args.allocator,
        pattern=args.pattern,
        calib=args.calib,
        levels=args.levels,
        beta=args.beta,
        modality_weights=args.modality_weights,
        worst_case=args.worst_case,
        distortion=args.distortion,
        synthetic=args.synthetic,
        nm_policy=args.nm_policy,
        permute=args.permute,
        seed=args.seed,
        operator=args.operator,
        obs_percdamp=args.obs_percdamp,
    )
    if config.latency_table is not None:  # the table alone: refused before the model is even built
        check_latency_table(config, load_latency_table(config.latency_table))
    print(budget_line(config, args.budget))
    print(f"torch threads: {apply_threads(args.threads)}")
    model, frames, forward, spec = _load(args, config.calib)
    out_dir = Path(args.out) / "sparsity"
    extra = {"forward": forward} if forward is not None else {}
    if getattr(spec, "modalities", ()):
        extra["modality"] = spec.modality_of
    with LayerDisplay() as display:
        _, _, plan = run_sparsity_stage(model, None, config, out_dir, frames, transforms=spec.outputs,
                                        layer_progress=display.update, **extra)
    counts = plan.forward_counts
    print(f"sparsity plan: {out_dir / 'plan.json'}")
    print(
        f"  {plan.allocator} / {plan.pattern}: {plan.budget_kind} kept {plan.achieved_fraction:.4f} "
        f"(budget {plan.budget_fraction:g}), parameter sparsity {plan.achieved_sparsity:.4f}"
    )
    if counts:
        print(
            f"  sensitivity: {counts['equivalent_full_forwards']:.1f} equivalent full forwards "
            f"(naive {counts['naive_full_forwards']:.0f}), {plan.sensitivity_seconds:.1f} s"
        )
    return 0


def budget_line(config: Any, text: str) -> str:
    """The budget in its explicit form; a latency budget without @F says which fraction it took."""
    if config.budget_kind != "latency":
        return f"budget: {config.budget_kind}={config.budget:g} (fraction of the dense cost kept)"
    # ``text``: prune's --budget or compile's --sparsity spec (a spec file cannot leave F out silently)
    implicit = "latency=" in text and "@" not in text.split("latency=", 1)[1].split(",")[0]
    note = f" (no @F given: the default {config.budget:g})" if implicit else ""
    return f"budget: latency={config.latency_table}@{config.budget:g}{note}"


class LayerDisplay:
    """A transient per-layer progress bar on stderr; rich keeps it quiet when that is not a terminal.
    Updated once per layer, so it costs nothing next to the layer's forwards."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("[dim]{task.fields[layer]}[/]"), TimeElapsedColumn(),
                            console=console or Console(stderr=True), transient=True)
        self.task = self.bar.add_task("calibration forwards", total=None, layer="")

    def __enter__(self) -> LayerDisplay:
        # Not a terminal (a log, a pipe): no display at all; rich would still write a blank line.
        self.live = self.bar.console.is_terminal
        if self.live:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.__exit__(*exc)

    def update(self, done: int, total: int, layer: str) -> None:
        self.bar.update(self.task, description="sensitivity, layer", completed=done, total=total,
                        layer=short_label(layer))


def short_label(label: str) -> str:
    """'camera.stem.0.weight · level 3/20' -> 'camera.stem.0 · level 3/20' (every layer is a weight)."""
    name, sep, rest = label.partition(" · ")
    return name.removesuffix(".weight") + sep + rest


def preset_inputs(model: str, checkpoint: str | None, calib_seeds: str | None,
                  seed: int) -> tuple[str | None, str | None, list[str]]:
    """(checkpoint or None for seeded init, calibration seeds or None for random frames, the lines
    saying so) of a preset: by default its shipped checkpoint and the benchmark's calibration split."""
    from pathlib import Path

    import sparsefuse.models as models_pkg

    shipped = Path(models_pkg.__file__).parent / "checkpoints" / f"{model}.safetensors"
    if checkpoint is not None and checkpoint.lower() not in NONE:
        weights, line = checkpoint, f"weights: {checkpoint}"
    elif checkpoint is None and shipped.is_file():
        weights = str(shipped)
        line = f"weights: {shipped} (the shipped checkpoint; --checkpoint none for seeded init)"
    else:
        weights = None
        why = "--checkpoint none" if checkpoint is not None else f"no checkpoint ships for {model}"
        line = f"weights: seeded init (seed {seed}; {why}): an untrained model"
    seeds = CALIB_SEEDS if calib_seeds is None else None if calib_seeds.lower() in NONE else calib_seeds
    if not seeds:
        frames = f"frames: seeded random frames (models/frames.py, seed {seed})"
    elif calib_seeds is None:
        frames = f"frames: benchmark scenes {seeds} (the calibration split; --calib-seeds none: random)"
    else:
        frames = f"frames: synthetic benchmark scenes {seeds}"
    return weights, seeds, [line, frames]


def _load(args: argparse.Namespace, count: int):
    from sparsefuse.compiler.model_interface import parse_model_ref
    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset, preset_spec

    ref = parse_model_ref(args.model)
    if not ref.is_preset:
        return _load_user_model(ref, args, count)

    preset = get_preset(args.model)
    checkpoint, seeds, lines = preset_inputs(args.model, args.checkpoint, args.calib_seeds, args.seed)
    for line in lines:
        print(line)
    model = build_model(args.model, seed=args.seed)
    if checkpoint:
        from sparsefuse.models.train import load_checkpoint

        load_checkpoint(model, checkpoint)  # SparsefuseError with a hint on a bad file
    if seeds:
        frames = _benchmark_frames(args.model, seeds, count, args.data_cache)
        return model.eval(), frames, None, preset_spec(args.model)
    frames = [random_frame(preset, args.seed * 1000 + i, args.num_points) for i in range(count)]
    return model.eval(), frames, None, preset_spec(args.model)


def _load_user_model(ref, args: argparse.Namespace, count: int):
    """(converted model, calibration frames as tensors, forward) of a user's model."""
    from pathlib import Path

    import numpy as np
    import torch

    from sparsefuse.compiler.model_source import factory_source

    if args.frames is None:
        from sparsefuse.errors import SparsefuseError

        raise SparsefuseError(f"--model {args.model} needs calibration frames",
                              "pass --frames DIR (one .npz per frame, keys = the forward's argument names)")
    source = factory_source(ref, Path(args.frames), Path(args.checkpoint) if args.checkpoint else None)
    frames = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in f.items()}
              for f in source.frames.calibration_frames(count)]
    for warning in source.warnings():
        print(f"warning: {warning}")
    return source.converted, frames, source.torch_forward, source.spec


def _benchmark_frames(model: str, seeds_text: str, count: int, cache_dir: str) -> list:
    """The first ``count`` frames of a synthetic-benchmark seed split, sliced from the split's cache
    when sparsefuse data/train already rendered it, else rendered and cached for those seeds."""
    from pathlib import Path

    from sparsefuse.compiler.commands.data import parse_seeds, preset_rig_for
    from sparsefuse.models.synthetic.dataset import cache_key, cached_frames, load_frames
    from sparsefuse.models.synthetic.generate import SyntheticConfig

    seeds, rig = parse_seeds(seeds_text), preset_rig_for(model)
    whole = Path(cache_dir) / f"frames-{cache_key(seeds, rig, SyntheticConfig())}.npz"
    if whole.is_file():
        return load_frames(whole)[:count]
    return cached_frames(seeds[:count], rig, cache_dir)
