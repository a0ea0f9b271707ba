"""Run `vllm serve` as a subprocess and wait until it answers (for examples, tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from vllm_helix.errors import StartupError
from vllm_helix.host import shared_host_env


class VllmServer:
    """`with VllmServer(model, ["--executor", "helix", ...]) as url:` -> 'http://127.0.0.1:PORT/v1'."""

    def __init__(self, model: str | Path, args: Sequence[str] = (), *, port: int | None = None,
                 log_path: str | Path | None = None, env: dict[str, str] | None = None, timeout_s: float = 600,
                 on_log_line: Callable[[str], None] | None = None):
        from vllm_helix.coordinator.local_nodes import free_port

        self.port = port or free_port()
        self.command = [str(Path(sys.executable).with_name("vllm")), "serve", str(model), "--port", str(self.port),
                        "--host", "127.0.0.1", *args]
        self.env = {"VLLM_CPU_KVCACHE_SPACE": "1", **shared_host_env(), **(env or {})}
        self.log_path = Path(log_path or f"/tmp/vllm-serve-{self.port}.log")
        self.timeout_s = timeout_s
        self.on_log_line = on_log_line  # sees each line the server logs while it starts
        self._partial = ""
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        with open(self.log_path, "w") as log:
            self.process = process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                                      env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        with open(self.log_path, errors="replace") as follow:
            while time.monotonic() < deadline:
                self._pass_on(follow)
                if self._poll_started(process):
                    self._pass_on(follow)
                    return self.url
        self.stop()
        raise StartupError(f"`vllm serve` did not answer within {self.timeout_s:.0f} s; see {self.log_path}")

    def _pass_on(self, follow: TextIO) -> None:
        if self.on_log_line is None:
            return
        self._partial += follow.read()
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.on_log_line(line)

    def _poll_started(self, process: subprocess.Popen) -> bool:
        if process.poll() is not None:
            raise StartupError(f"`vllm serve` exited with status {process.returncode} during start-up; "
                               f"last lines of {self.log_path}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                return True
        except OSError:
            time.sleep(1)
            return False

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGINT (vLLM's clean shutdown), then SIGKILL for the whole process group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
