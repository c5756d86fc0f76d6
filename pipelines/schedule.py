"""Run a compiled pipeline on this machine every N minutes until stopped (the local twin of a schedule)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.local_run import run_compiled


def run_every(
    template: Path,
    arguments: dict[str, Any],
    home: Path,
    minutes: float,
    runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[bool]:
    """Run `template` now and then every `minutes` (from each start), `runs` times or until Ctrl-C."""
    outcomes: list[bool] = []
    try:
        while runs is None or len(outcomes) < runs:
            started = time.monotonic()
            print(f"scheduled run {len(outcomes) + 1}", flush=True)
            outcomes.append(run_compiled(template, arguments, home).ok)
            if runs is not None and len(outcomes) >= runs:
                break
            sleep(max(0.0, minutes * 60 - (time.monotonic() - started)))
    except KeyboardInterrupt:
        print("schedule stopped", flush=True)
    return outcomes
