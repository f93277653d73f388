"""``sparsefuse compile``: model + rig -> verified artifacts for one target (docs/design.md §3)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from sparsefuse.compiler.threads import add_threads_option

STAGE_NAMES = ("export", "sparsity", "passes", "precision", "lower", "build", "verify", "profile", "report")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="export, [prune,] lower, build, verify and profile a model for one target",
        description="Convert third-party modules of your model (spconv, voxelization, bev_pool) into "
                    "sparsefuse ops, export it to ONNX (custom ops as single nodes), optionally prune it "
                    "(--sparsity), clean it up, lower it for the target, build the engine (or the "
                    "TensorRT recipes), verify it against PyTorch on fresh frames, profile it "
                    "(measured on cpu, estimated for TensorRT targets) and write report.md. "
                    "Exit codes: 0 verified, 1 verify failed, 2 usage error.",
    )
    parser.add_argument("--model", required=True,
                        help="a preset (bevfusion-tiny, bevfusion-base), or your model: "
                             "path/to/model.py:factory or package.module:factory (the factory returns the "
                             "nn.Module, or (module, sparsefuse.ModelSpec))")
    parser.add_argument("--frames", default=None, metavar="DIR",
                        help="your model's frames: one .npz per frame, keys = the forward's argument "
                             "names; the first frame exports, the others verify")
    parser.add_argument("--target", required=True,
                        help="target tag (see `sparsefuse targets`), e.g. cpu or jetson/agx-orin-64gb, "
                             "or a target TOML file")
    parser.add_argument("--out", required=True, help="artifact directory (created if missing)")
    parser.add_argument("--rig", default=None,
                        help="sensor rig JSON for a preset (default: the preset's built-in rig)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint: .safetensors, or for your model a state dict .pth/.pt/.ckpt read "
                             "with torch.load(weights_only=True) (mmdet3d / OpenPCDet: its state_dict / "
                             "model entry); default: the preset's seeded init or your factory's weights")
    parser.add_argument("--seed", type=int, default=0,
                        help="a preset's seed of the initial weights and of the export frame")
    parser.add_argument("--verify-frames", type=int, default=3, help="fresh frames to verify (default 3)")
    parser.add_argument("--sparsity", default=None, metavar="SPEC",
                        help="add a sparsity stage: e.g. budget=params=0.5,allocator=rdprune,"
                             "pattern=unstructured,calib=4 (or a JSON / TOML file with these keys)")
    parser.add_argument("--precision", default="fp32",
                        help="the graph's precision (TensorRT 11 is strongly typed: it lives in the ONNX): "
                             "fp32 (default); fp16 with FP32 islands measured on calibration frames; int8 "
                             "with explicit Q/DQ (post-training calibration); writes OUT/precision/")
    parser.add_argument("--calibrator", default=None,
                        help="int8 activation calibrator: max (default), percentile (99.99; percentile=99.9 "
                             "for another), entropy (KL, TensorRT-style), mse")
    parser.add_argument("--calib-frames", type=int, default=None,
                        help="calibration frames of the precision stage (default 8)")
    parser.add_argument("--int8-sensitivity", type=float, default=None, metavar="FRACTION",
                        help="int8: keep an activation float when quantizing it alone moves an output by "
                             "more than this fraction of its range on the calibration frames (default 0.1; "
                             "1 quantizes every site)")
    add_threads_option(parser, "the PyTorch reference (verify) and the sparsity stage (ONNX Runtime's "
                               "threads are the target's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsefuse.compiler.config import make_config
    from sparsefuse.compiler.pipeline import compile_model
    from sparsefuse.compiler.threads import check_threads

    threads = check_threads(args.threads)
    config = make_config(args.model, args.target, args.out, args.rig, args.seed, args.verify_frames,
                         args.weights, args.sparsity, frames=args.frames, precision=args.precision,
                         calibrator=args.calibrator, calib_frames=args.calib_frames,
                         int8_sensitivity=args.int8_sensitivity)
    if config.sparsity is not None:
        _check_sparsity_budget(config.sparsity, args.sparsity)
    source = prepare_source(config)
    names = [n for n in STAGE_NAMES if (n != "sparsity" or config.sparsity is not None)
             and (n != "precision" or config.precision is not None)]
    with RichProgress(names) as progress:
        result = compile_model(config, progress, source, threads=threads)
    # After the stages, not before: a refusal mid-compile stays the only line on stderr.
    progress.console.print(f"[dim]torch threads: {threads} (reference and sparsity)[/]")
    progress.summary(result)
    return 0 if result.verify_passed else 1


def _check_sparsity_budget(sparsity: Any, text: str) -> None:
    """Print the sparsity budget in its explicit form and refuse an infeasible latency budget from
    its table alone, before the model is built or exported."""
    from sparsefuse.compiler.commands.prune import budget_line

    if sparsity.latency_table is not None:
        from sparsefuse.passes.sparsity.decide import check_latency_table
        from sparsefuse.passes.sparsity.stage import load_latency_table

        check_latency_table(sparsity, load_latency_table(sparsity.latency_table))
    print(f"sparsity {budget_line(sparsity, text)}")


def prepare_source(config: Any) -> Any:
    """A user model is imported, its frames checked against the forward and its modules converted
    before the stage display starts: these are the cheap checks that catch most mistakes. A
    preset's model is built lazily (a cached recompile never needs it)."""
    from sparsefuse.compiler.model_source import source_from_config

    source = source_from_config(config)
    if not source.is_preset:
        source.conversion  # noqa: B018 (unsupported modules are refused here, by path)
    return source


class RichProgress:
    """One line per stage with a spinner while it runs, its time, and 'cached' when skipped."""

    def __init__(self, stage_names: list[str] | tuple[str, ...] = STAGE_NAMES) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"),
                            TimeElapsedColumn(), console=self.console, transient=False)
        self.tasks = {name: self.bar.add_task(f"[dim]{name}[/]", total=1, start=False)
                      for name in stage_names}
        self._started: dict[str, float] = {}

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # a refusal or Ctrl-C: the error line alone says what happened
            self.bar.live.transient = True
        self.bar.__exit__(*exc)

    def stage_started(self, name: str) -> None:
        task = self._task(name)
        self._started[name] = time.perf_counter()
        self.bar.update(task, description=f"[bold]{name}[/]")
        self.bar.start_task(task)

    def stage_finished(self, record: Any) -> None:
        note = "cached" if record.cached else f"{record.wall_s:.1f} s"
        summary = _summary(record.name, record.details)
        self.bar.update(self._task(record.name), completed=1,
                        description=f"{record.name} [dim]({note})[/] {summary}".rstrip())

    def stage_progress(self, name: str, done: int, total: int, label: str) -> None:
        """Within a running stage (the sparsity stage's layers): its own line's description changes,
        so the display stays one line per stage; ``stage_finished`` replaces it with the summary."""
        from sparsefuse.compiler.commands.prune import short_label

        where = f" ({short_label(label)})" if label else ""
        step = f"layer {min(done + 1, total)}/{total}{where}" if total else "calibration forwards"
        self.bar.update(self._task(name), description=f"[bold]{name}[/] [dim]{step}[/]")

    def log(self, message: str) -> None:
        """Per-pass lines are recorded in compile.json; the display stays one line per stage."""

    def summary(self, result: Any) -> None:
        verdict = "[green]verified[/]" if result.verify_passed else "[red]verify FAILED[/] (see verify.json)"
        # soft_wrap: the terminal may wrap the line, but rich must not break it inside a path.
        self.console.print(f"{verdict}: artifacts in {result.out} ({result.wall_s:.1f} s); "
                           f"summary in {result.out / 'report.md'}", soft_wrap=True)
        if not result.verify_passed:
            verify = [r for r in result.stages if r.name == "verify"]
            command = verify[0].details.get("polygraphy_command") if verify else None
            if command:
                self.console.print(f"reproduce: cd {result.out} && {command}", markup=False, soft_wrap=True)

    def _task(self, name: str) -> Any:
        if name not in self.tasks:  # stages added later show up without touching this file
            self.tasks[name] = self.bar.add_task(name, total=1, start=False)
        return self.tasks[name]


def _summary(stage: str, details: dict[str, Any]) -> str:
    """A few words on what a stage produced, from its recorded details."""
    if stage == "export":
        nodes = details.get("custom_nodes", {})
        converted = f"{details['converted']} modules converted, " if details.get("converted") else ""
        return (f"[dim]{converted}{sum(nodes.values())} custom nodes, "
                f"{details.get('params_mapped', 0)} params mapped[/]")
    if stage == "lower":
        return f"[dim]{len(details.get('functions', []))} function bodies[/]"
    if stage == "verify":
        return "[green]pass[/]" if details.get("pass") else "[red]FAIL[/]"
    if stage == "build" and details.get("backend") == "tensorrt":
        engine = details.get("built", {}).get("engine")
        return "[dim]TensorRT engine built[/]" if engine else "[dim]recipes only (no TensorRT here)[/]"
    if stage == "sparsity":
        return f"[dim]parameter sparsity {details.get('achieved_sparsity', 0):.3f}[/]"
    if stage == "precision":
        errors = details.get("calibration_error", {})
        worst = max((v for v in errors.values() if isinstance(v, int | float)), default=0.0)
        return f"[dim]{details.get('precision')}, worst calibration error {worst:.2g} of range[/]"
    if stage == "profile":
        latency = details.get("latency_ms", {})
        value = latency.get("median", latency.get("total"))
        return f"[dim]{details.get('label')} {value:.1f} ms[/]" if isinstance(value, int | float) else ""
    return ""
