"""A lab server (etcd, the Kubernetes API simulator) as a process group of its own: started
with a log file, optionally inside a network namespace, and stopped, frozen or thawed as a
whole -- with a namespace, the group holds the `ip netns exec` wrapper and the server it
exec'd. Stops only the process it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self


class ServerProcess:
    def __init__(self, workdir: str | Path | None, prefix: str, log_name: str,
                 netns: str | None) -> None:
        self.netns = netns
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def _wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._wrap(argv), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self, timeout: float = 20.0, wait: bool = True) -> Self:
        raise NotImplementedError

    def healthy(self) -> bool:
        """The server answers (its own check)."""
        raise NotImplementedError

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.log_path.stem} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.log_path.stem} not healthy after {timeout}s; see "
                           f"{self.log_path}")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        """SIGSTOP: connections stay up, nothing answers (a hung server)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGCONT)  # a frozen server must wake to die
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
