"""Child processes of the local stack: started in their own process group, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class StackError(RuntimeError):
    """A part of the local stack could not start; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def poll(what: str, ready: Callable[[], bool], deadline_s: float, interval_s: float = 0.1) -> None:
    """Wait until ready() is true, checking with backoff; StackError naming `what` at the deadline."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready within {deadline_s:.0f} s")
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 1.0)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (a 127.0.0.1 URL we built)
            return bool(200 <= answer.status < 300)
    except (urllib.error.URLError, OSError):
        return False


class ManagedProcess:
    """A child process with its output in a log file, stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, stdout: int | None = None) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, stdout=stdout or log, stderr=log, env=self.env,
                                        start_new_session=True)
        return self.process

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise StackError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")

    def read_ready_line(self, deadline_s: float) -> dict[str, Any]:
        """For children that announce readiness with one JSON line on stdout."""
        assert self.process is not None and self.process.stdout is not None
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=deadline_s):
                self.stop()
                raise StackError(f"{self.name} did not report ready within {deadline_s:.0f} s; see {self.log_path}")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=5)
            raise StackError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
        return dict(json.loads(line))

    def stop(self, grace_s: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)
        except ProcessLookupError:
            pass


def stop_together(processes: Iterable[ManagedProcess], grace_s: float = 10) -> None:
    """Stop several at once: a worker still waiting on its flow-run processes takes its whole grace, and two of
    them stopped one after the other took twice that (27 s of a test module's teardown)."""
    processes = list(processes)
    if processes:
        with ThreadPoolExecutor(max_workers=len(processes)) as pool:
            list(pool.map(lambda process: process.stop(grace_s), processes))


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
