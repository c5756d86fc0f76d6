"""A server started as a child process on this machine: a free loopback port, and waiting until it answers.

The child's output goes to a log file, so when it exits (or never answers) the
caller is told at once and shown the end of that output: a missing package or a
port in use reads as such, not as a timeout.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_child(command: list[str], log: Path, **popen: Any) -> subprocess.Popen:
    """Start `command` with its stdout and stderr going to `log` (for `wait_until_answering` to show)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)


def output_tail(log: Path | None, lines: int = 25) -> str:
    """The last `lines` lines of a child's log, indented, or '' when there is none."""
    if log is None or not log.is_file():
        return ""
    with log.open(errors="replace") as text:
        tail = deque(text, maxlen=lines)
    return "".join("    " + line for line in tail).rstrip()


def wait_until_answering(
    request: str | urllib.request.Request,
    process: subprocess.Popen,
    seconds: float = 90,
    timeout: float = 1,
    log: Path | None = None,
) -> None:
    """Poll `request` (a URL or a Request) until it succeeds; fail if `process` exits or time runs out.

    `log` is where the child writes its output (see `start_child`): its end is part of the error.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(_with_output(f"the server exited with code {process.returncode}", log))
        try:
            urllib.request.urlopen(request, timeout=timeout).read()
            return
        except OSError:
            time.sleep(0.2)
    target = request if isinstance(request, str) else request.full_url
    raise RuntimeError(_with_output(f"the server at {target} did not answer within {seconds:.0f}s", log))


def _with_output(message: str, log: Path | None) -> str:
    tail = output_tail(log)
    return f"{message}; the end of its output ({log}):\n{tail}" if tail else message
