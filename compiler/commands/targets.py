"""``sparsefuse targets``: list the deployment targets (registry + user TOML files)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "targets",
        help="list deployment targets and their rates",
        description="List the registry targets (targets/registry/*.toml). --show TAG|FILE.toml prints one "
        "target with the source of every number.",
    )
    parser.add_argument(
        "--show", metavar="TAG", default=None, help="one target (tag or .toml path) in detail"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _row(t: Any) -> dict[str, Any]:
    return {
        "tag": t.tag,
        "name": t.name,
        "backend": t.backend,
        "sm": t.sm,
        "jetpack": t.jetpack,
        "tensorrt": t.tensorrt,
        "fp16_dense_tflops": t.fp16_dense_tflops,
        "fp16_sparse_tflops": t.fp16_sparse_tflops,
        "int8_dense_tops": t.int8_dense_tops,
        "int8_sparse_tops": t.int8_sparse_tops,
        "fp32_tflops": t.fp32_tflops,
        "dram_gbps": t.dram_gbps,
        "memory_gb": t.memory_gb,
        "dla_cores": t.dla_cores,
        "power_modes": [f"{m.name} ({m.budget_w:g} W)" for m in t.power_modes],
        "features": [k for k, v in t.features().items() if v],
    }


def _rate(value: float) -> str:
    """3 significant digits, whole numbers from 100 up (no exponent notation)."""
    if not value:
        return "n/a"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _pair(dense: float, sparse: float) -> str:
    """``dense/sparse`` peak rates (3 significant digits), "-" without tensor-core rates."""
    return f"{_rate(dense)}/{_rate(sparse)}" if dense else "-"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from sparsefuse.targets.registry import get_target, list_targets

    console = Console()
    if args.show:
        target = get_target(args.show)
        doc = {**_row(target), "notes": target.notes, "sources": dict(target.sources)}
        if args.json:
            print(json.dumps(doc, indent=2))
            return 0
        table = Table(title=f"{target.tag}: {target.name}", show_lines=False)
        table.add_column("field")
        table.add_column("value")
        table.add_column("source", overflow="fold")
        for key, value in doc.items():
            if key not in ("sources",):
                text = ", ".join(value) if isinstance(value, list) else str(value)
                table.add_row(key, text, target.source(key))
        console.print(table)
        return 0
    targets = list_targets()
    if args.json:
        print(json.dumps([_row(t) for t in targets], indent=2))
        return 0
    from rich import box

    # Fits 80 columns without breaking a tag mid-word (a broken tag cannot be copied): no borders,
    # rates rounded to 3 significant digits; JetPack, power modes and sources are in --show TAG.
    table = Table(title="sparsefuse targets: peak FP16 TFLOPS and INT8 TOPS (dense/2:4 sparse), "
                        "DRAM GB/s, memory GB", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("tag", no_wrap=True, min_width=max(len(t.tag) for t in targets))
    for column in ("SM", "TRT", "FP16", "INT8", "DRAM", "mem", "DLA"):
        table.add_column(column, no_wrap=True, justify="right")
    for t in targets:
        table.add_row(
            t.tag,
            str(t.sm or "-"),
            t.tensorrt or ("ORT" if t.backend == "onnxruntime" else t.backend),
            _pair(t.fp16_dense_tflops, t.fp16_sparse_tflops),
            _pair(t.int8_dense_tops, t.int8_sparse_tops),
            _rate(t.dram_gbps),
            f"{t.memory_gb:g}",
            str(t.dla_cores),
        )
    console.print(table)
    console.print("Details, power modes and the source of every number: sparsefuse targets --show TAG. "
                  "Add a target: copy a file from targets/registry/ and pass its path as --target.")
    return 0
