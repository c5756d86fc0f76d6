"""A server started as a child process on this machine: a free loopback port, and waiting until it answers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(
    request: str | urllib.request.Request, process: subprocess.Popen, seconds: float = 90, timeout: float = 1
) -> None:
    """Poll `request` (a URL or a Request) until it succeeds; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            urllib.request.urlopen(request, timeout=timeout).read()
            return
        except OSError:
            time.sleep(0.2)
    target = request if isinstance(request, str) else request.full_url
    raise RuntimeError(f"the server at {target} did not answer within {seconds:.0f}s")
