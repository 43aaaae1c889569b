"""Tables of ``python -m trainables.reproduce``: gathers OUT/runs/*.json into OUT/results.json and OUT/table.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def write_tables(out: Path, cache: Path, args: argparse.Namespace, argv: list[str]) -> str:
    """Write OUT/results.json and OUT/table.md; return the table."""
    raise NotImplementedError
