"""``sparsefuse handoff OUT --target T``: write a verified, optionally signed hand-off bundle."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "handoff",
        help="package a compile for vehicle integration (bundle dir + deterministic tar.gz)",
        description="Bundle the lowered ONNX, plugin sources and CMake recipe, engine scripts, sparsity "
        "plan, golden frames with tolerances, latency budget and profile, README and a "
        "manifest with SHA-256 of every file; optionally signed with ed25519.",
    )
    p.add_argument("out", type=Path, help="compile directory (OUT of `sparsefuse compile`)")
    p.add_argument("--target", required=True, help="target tag, e.g. jetson/agx-orin-64gb")
    p.add_argument(
        "--out",
        dest="bundle_dir",
        type=Path,
        default=None,
        help="bundle directory (default OUT/handoff/<target>); BUNDLE.tar.gz is written beside it",
    )
    p.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        help="ed25519 private key (PEM; `openssl genpkey -algorithm ed25519 -out key.pem`)",
    )
    p.add_argument(
        "--latency-budget-ms", type=float, default=None, help="latency budget recorded in the bundle"
    )
    p.add_argument("--golden-frames", type=int, default=2, help="golden frames to ship (default 2)")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="ship this profile.json as the latency record even if it was made for another target "
        "(it stays labelled with its own target); by default OUT/profile.json ships only when it is "
        "for --target",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsefuse.compiler.handoff import HandoffOptions, make_bundle
    from sparsefuse.errors import SparsefuseError

    if not 1 <= args.golden_frames <= 16:
        raise SparsefuseError(f"--golden-frames {args.golden_frames} is outside [1, 16]", "the default is 2")
    if args.profile is not None and not args.profile.is_file():
        raise SparsefuseError(f"profile not found: {args.profile}",
                              "pass a profile.json written by sparsefuse")
    if args.latency_budget_ms is not None and not 0 < args.latency_budget_ms < float("inf"):  # NaN too
        raise SparsefuseError(f"--latency-budget-ms {args.latency_budget_ms} is not a positive finite number",
                              "e.g. 50")
    if args.sign_key is not None:  # a bad key is found now, not after the bundle is built
        from sparsefuse.compiler.bundle import sign

        sign(b"key check", args.sign_key)
    result = make_bundle(
        HandoffOptions(
            out=args.out,
            target=args.target,
            bundle_dir=args.bundle_dir,
            sign_key=args.sign_key,
            latency_budget_ms=args.latency_budget_ms,
            golden_frames=args.golden_frames,
            profile=args.profile,
        )
    )
    print(
        f"bundle: {result.bundle_dir} ({len(result.manifest['files'])} files"
        f"{', signed' if result.signed else ''})"
    )
    print(f"archive: {result.archive}")
    import json

    note = json.loads((result.bundle_dir / "latency" / "budget.json").read_text()).get("profile_note")
    if note:
        print(f"note: {note} (pass --profile OUT/profile.json to ship it anyway, labelled with its target)")
    return 0
