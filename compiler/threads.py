"""torch intra-op threads of the PyTorch reference and sparsity work (``--threads`` of prune / compile).

The default is 1: that work is many short, index-heavy forwards whose parallel regions stall each
other on a small or shared CPU. Measured on the 2-core VM (bench/RESULTS.md, "prune threads"): a small
``sparsefuse prune`` took 29 s with 1 thread and several times longer with torch's default of 2.
"""

from __future__ import annotations

import argparse

from sparsefuse.errors import SparsefuseError

DEFAULT_THREADS = 1
MAX_THREADS = 1024


def add_threads_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch intra-op threads for {what} (default {DEFAULT_THREADS}: more threads "
                             "stall each other on a small or shared CPU; raise it on a large idle machine)")


def check_threads(threads: int) -> int:
    """``threads`` when it is a sane thread count, else a one-line user error."""
    if not 1 <= threads <= MAX_THREADS:
        raise SparsefuseError(f"--threads {threads} is not a thread count",
                              f"give 1 to {MAX_THREADS} (default {DEFAULT_THREADS})")
    return threads


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads (after ``check_threads``); returns the count now in use."""
    import torch

    torch.set_num_threads(check_threads(threads))
    return torch.get_num_threads()
