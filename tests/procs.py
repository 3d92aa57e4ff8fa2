"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1,
started in their own working directory (not the client's), as deploy/ runs them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DASK = shutil.which("dask")
MLR_DASK = shutil.which("mlr-dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


class ProcessCluster:
    """Scheduler + ``n_workers`` single-threaded workers (each under a nanny, which restarts a
    killed worker process)."""

    def __init__(self, workdir: Path, n_workers: int = 2, memory_limit: str = "2GB") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_workers = n_workers
        self.memory_limit = memory_limit
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list = []

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        self.logs.append(log)
        return subprocess.Popen(args, cwd=self.workdir, env=clean_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 60) -> ProcessCluster:
        self.scheduler = self._spawn(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--dashboard-address", f"127.0.0.1:{free_port()}"], "scheduler")
        self.start_workers(timeout)
        return self

    def start_workers(self, timeout: float = 60) -> None:
        for i in range(self.n_workers):
            self.workers.append(self._spawn(
                [DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--nworkers", "1", "--memory-limit", self.memory_limit,
                 "--preload", "mlr_dask.workers", "--name", f"w{i}-{len(self.workers)}"],
                f"worker{len(self.workers)}"))
        self.wait_for_workers(self.n_workers, timeout)

    def client(self, timeout: float = 10):
        from distributed import Client

        return Client(self.address, timeout=timeout)

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                with self.client(timeout=5) as c:
                    c.wait_for_workers(n, timeout=max(1.0, deadline - time.time()))
                    return
            except (OSError, TimeoutError):
                if time.time() > deadline:
                    raise

    def worker_process_pids(self) -> list[int]:
        """Pids of the worker processes (the nannies' children)."""
        import psutil

        pids = []
        for w in self.workers:
            if w.poll() is None:
                pids += [c.pid for c in psutil.Process(w.pid).children(recursive=True)
                         if "python" in c.name().lower() or c.cmdline()]
        return pids

    def kill_one_worker(self) -> int:
        """SIGKILL one worker process (its nanny starts a new one); returns its pid."""
        pid = self.worker_process_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def stop(self) -> None:
        for p in reversed([self.scheduler, *self.workers]):
            if p is None or p.poll() is not None:
                continue
            with_suppress_kill(p)
        for log in self.logs:
            log.close()

    def __enter__(self) -> ProcessCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def with_suppress_kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def mlr_dask(args: list[str], cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the CLI in ``cwd``; returns the completed process (stdout/stderr as text)."""
    return subprocess.run([MLR_DASK, *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


def json_out(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


__all__ = ["ProcessCluster", "mlr_dask", "json_out", "free_port", "clean_env", "DASK",
           "MLR_DASK"]
