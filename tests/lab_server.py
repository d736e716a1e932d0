"""Test helper: the lab's OpenAI-compatible server (or any other) as a real subprocess on a free loopback port.

    with lab_server(["--model", path, "--replay", str(replay)], log=tmp / "server.log") as base:
        httpx.get(base + "/health")
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_server(args: list[str], log: Path) -> contextlib.AbstractContextManager[str]:
    """Start `python -m reflection_lab.server ARGS`, wait for /health, yield its base URL, stop it afterwards."""
    return http_server([sys.executable, "-m", "reflection_lab.server", *args], log)


@contextlib.contextmanager
def http_server(command: list[str], log: Path, start_s: float = 90) -> Iterator[str]:
    """Start any server COMMAND that takes `--port N` and answers GET /health; yield its base URL; stop it."""
    out = open(log, "w")
    proc = None
    try:
        for _ in range(3):  # a free port can be taken between the probe and the bind: try another
            port = free_port()
            proc = subprocess.Popen([*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + start_s
            while time.time() < deadline and proc.poll() is None:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            if proc.poll() is None:
                break
        else:
            pytest.fail("server did not start: " + log.read_text()[-2000:])
        yield base
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
