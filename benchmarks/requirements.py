"""What a benchmark needs beyond fleetops, checked before it starts anything.

A baseline server that cannot import its framework would otherwise show up
minutes later as "the server did not answer"; `require` names what is missing,
why the benchmark needs it and the command that installs it, and stops.
"""

from __future__ import annotations

import importlib.util
import sys

INSTALL_BENCH = "pip install -e '.[bench]'  (or: make bench, which installs it and runs every benchmark)"


def missing(modules: dict[str, str]) -> list[str]:
    """`package (why)` for each module (name -> why the benchmark needs it) that cannot be imported."""
    return [f"Python package {m!r} ({why})" for m, why in modules.items() if importlib.util.find_spec(m) is None]


def require(benchmark: str, modules: dict[str, str], install: str = INSTALL_BENCH) -> None:
    """Exit with code 2 and a message naming what is missing, unless every module imports."""
    gaps = missing(modules)
    if gaps:
        lines = "\n".join(f"  - {gap}" for gap in gaps)
        print(f"{benchmark} cannot run, it needs:\n{lines}\ninstall with: {install}", file=sys.stderr)
        raise SystemExit(2)
