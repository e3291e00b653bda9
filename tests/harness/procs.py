"""Child processes for tests: own log file, free loopback port, wait on a condition, always killed.

Every server the tests start (docker-registry, etcd, kube-apiserver, ...) goes through `Service`, so
that teardown is one place and a failing test can print the tail of every log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_started: list[Service] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    service: Service | None = None,
) -> object:
    """Poll `condition` until it returns a truthy value; raise TimeoutError naming `what` otherwise.

    A poll with a deadline, never a blind sleep: the first truthy result returns at once.
    If `service` died meanwhile, fail at once with its log tail.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as e:  # the condition is allowed to fail while the thing starts
            last_error = e
        if service is not None and service.proc is not None and service.proc.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited with {service.proc.returncode} while waiting for {what}\n"
                + service.tail()
            )
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            tail = ("\n" + service.tail()) if service is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{tail}")
        time.sleep(interval)  # polling interval of a deadline-bounded wait, not synchronisation


class Service:
    """One child process with its log file. Use as a context manager or call stop()."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Service:
        log = self.log_path.open("ab")
        full_env = dict(os.environ)
        if self.env:
            full_env.update(self.env)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=self.cwd,
            start_new_session=True,  # own process group: stop() kills children too
        )
        log.close()
        if self not in _started:  # a restarted service is still one service
            _started.append(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace)

    def kill(self) -> None:
        """SIGKILL the process group and reap it: a crash, an OOM kill, a node losing power.

        Nothing runs on the way out (no graceful shutdown, no FIN sent by the program itself; the
        kernel closes its sockets). `start()` again restarts it with the same argv, log and ports.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"--- {self.name}: no log at {self.log_path}"
        return f"--- last {len(text)} lines of {self.log_path}\n" + "\n".join(text)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every service still running (atexit / session teardown safety net)."""
    for svc in reversed(_started):
        svc.stop(grace=5)
    _started.clear()


def running_tails() -> str:
    return "\n".join(s.tail() for s in _started)
