"""Child servers (the demo's, the tests', the benchmarks') that fail are reported at once, with their output."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetops_cli.child_server import free_port, start_child, wait_until_answering

ROOT = Path(__file__).resolve().parents[1]


def test_a_child_that_exits_is_reported_at_once_with_the_end_of_its_output(tmp_path):
    log = tmp_path / "server.log"
    script = "import sys; print('starting'); sys.exit(\"ModuleNotFoundError: No module named 'fastapi'\")"
    child = start_child([sys.executable, "-c", script], log)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        wait_until_answering(f"http://127.0.0.1:{free_port()}/health", child, seconds=60, log=log)
    assert time.monotonic() - started < 10  # not the 60 s timeout
    message = str(caught.value)
    assert "exited with code 1" in message
    assert "starting" in message and "No module named 'fastapi'" in message


def test_a_child_that_never_answers_is_reported_with_its_output(tmp_path):
    log = tmp_path / "server.log"
    child = start_child(
        [sys.executable, "-c", "print('listening elsewhere', flush=True); import time; time.sleep(60)"], log
    )
    try:
        with pytest.raises(RuntimeError, match=r"did not answer within 1s(.|\n)*listening elsewhere"):
            wait_until_answering(f"http://127.0.0.1:{free_port()}/health", child, seconds=1, log=log)
    finally:
        child.kill()
        child.wait()


def test_a_benchmark_says_what_to_install_before_starting_anything():
    # fastapi made unimportable, as in an environment without the bench extras.
    hide = (
        "import runpy, sys; sys.modules['fastapi'] = None; sys.argv = ['bench_serving.py'];"
        "runpy.run_path('benchmarks/bench_serving.py', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Python package 'fastapi'" in done.stderr
    assert "pip install -e '.[bench]'" in done.stderr
