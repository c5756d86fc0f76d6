"""The local twin's pipeline runs: a compiled pipeline run on this machine with kfp.local, and its schedule.

The run happens in a child process (`python -m fleetops_cli.local_run`: the
library itself imports no kfp) whose output (every executor's log) goes to
`<home>/runs/<run>/run.log`; this process follows that file and prints one line
per finished task. The same compiled YAML is what Vertex would run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

CHILD = "fleetops_cli.local_run"  # the module that runs a template under kfp.local
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_PIPELINE_DONE = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")


@dataclass
class LocalRun:
    ok: bool
    run_dir: Path
    log_path: Path
    outputs: dict[str, Any]
    seconds: float
    tasks: list[tuple[str, str, float]]


def run_compiled(
    template: str | Path,
    arguments: dict[str, Any],
    home: str | Path,
    out: TextIO = sys.stdout,
) -> LocalRun:
    """Run `template` (compiled YAML) under kfp.local with `arguments`; print progress to `out`."""
    home = Path(home).resolve()
    run_dir = home / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "arguments.json").write_text(json.dumps(arguments, indent=2))
    log_path = run_dir / "run.log"
    result_path = run_dir / "outputs.json"
    started = time.perf_counter()
    command = [sys.executable, "-m", CHILD, str(template), str(run_dir), str(home / "pipeline_root")]
    tasks: list[tuple[str, str, float]] = []
    with log_path.open("w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[3])
        with log_path.open() as follow:
            running: dict[str, list[float]] = {}
            while True:
                line = follow.readline()
                if not line:
                    if child.poll() is not None and not follow.readline():
                        break
                    time.sleep(0.1)
                    continue
                _progress(_ANSI.sub("", line), running, tasks, started, out)
    seconds = time.perf_counter() - started
    ok = child.returncode == 0 and result_path.is_file()
    outputs = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if not ok:
        out.write(_failure_excerpt(log_path))
    return LocalRun(ok, run_dir, log_path, outputs, seconds, tasks)


def _progress(
    line: str, running: dict[str, list[float]], tasks: list[tuple[str, str, float]], started: float, out: TextIO
) -> None:
    now = time.perf_counter()
    if match := _STARTED.search(line):
        running.setdefault(match.group(1), []).append(now)
    elif match := _FINISHED.search(line):
        name, status = match.groups()
        starts = running.get(name)
        begun = starts.pop(0) if starts else now
        tasks.append((name, status, now - begun))
        mark = "ok " if status == "SUCCESS" else "FAILED"
        out.write(f"  [{now - started:6.1f}s] {mark} {name:<10} {now - begun:5.1f}s\n")
        out.flush()


def _failure_excerpt(log_path: Path, lines: int = 40) -> str:
    """The end of the failing task's log: the error and, for bad data, the validation report."""
    text = _ANSI.sub("", log_path.read_text(errors="replace")).splitlines()
    errors = [i for i, line in enumerate(text) if re.search(r"\b\w*(Error|Exception)\b: ", line)]
    end = errors[0] + 1 if errors else len(text)
    excerpt = "\n".join(text[max(0, end - lines) : end])
    return f"\n--- the run failed; the end of the failing task's log (full log: {log_path}) ---\n{excerpt}\n"


def run_every(
    template: Path,
    arguments: dict[str, Any],
    home: Path,
    minutes: float,
    runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    out: TextIO = sys.stdout,
) -> list[bool]:
    """Run `template` now and then every `minutes` (from each start), `runs` times or until Ctrl-C."""
    outcomes: list[bool] = []
    try:
        while runs is None or len(outcomes) < runs:
            started = time.monotonic()
            print(f"scheduled run {len(outcomes) + 1}", file=out, flush=True)
            outcomes.append(run_compiled(template, arguments, home, out).ok)
            if runs is not None and len(outcomes) >= runs:
                break
            sleep(max(0.0, minutes * 60 - (time.monotonic() - started)))
    except KeyboardInterrupt:
        print("schedule stopped", file=out, flush=True)
    return outcomes
