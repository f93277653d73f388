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
    return f"{value:g}" if value else "n/a"


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
    table = Table(title="sparsefuse targets (rates: dense / 2:4 sparse peak)")
    for column in (
        "tag",
        "SM",
        "JetPack / TRT",
        "FP16 TFLOPS",
        "INT8 TOPS",
        "DRAM GB/s",
        "mem GB",
        "DLA",
        "power",
    ):
        table.add_column(column, overflow="fold")
    for t in targets:
        rates16 = f"{t.fp16_dense_tflops:g} / {_rate(t.fp16_sparse_tflops)}" if t.fp16_dense_tflops else "-"
        rates8 = f"{t.int8_dense_tops:g} / {_rate(t.int8_sparse_tops)}" if t.int8_dense_tops else "-"
        stack = " / ".join(
            x for x in (t.jetpack and f"JP {t.jetpack}", t.tensorrt and f"TRT {t.tensorrt}") if x
        )
        table.add_row(
            t.tag,
            str(t.sm or "-"),
            stack or t.backend,
            rates16,
            rates8,
            f"{t.dram_gbps:g}",
            f"{t.memory_gb:g}",
            str(t.dla_cores),
            ", ".join(m.name for m in t.power_modes) or "-",
        )
    console.print(table)
    console.print("Add a target: copy a file from targets/registry/ and pass its path as --target.")
    return 0
