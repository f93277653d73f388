"""CLI subcommands, one module each (see compiler/cli.py)."""
