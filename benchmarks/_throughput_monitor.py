"""train_throughput.py's resource sampling: RSS and CPU % (psutil) and, on CUDA, nvidia-smi utilization and
memory, sampled in threads while training runs; and the process's peak RSS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

perf = time.perf_counter


# ----------------------------------------------------------------------------- resources


class Monitor:
    """RSS and CPU % (psutil) and, on CUDA, nvidia-smi utilization and memory, sampled in threads."""

    def __init__(self, cuda: bool, interval: float = 0.25) -> None:
        self.cuda, self.interval = cuda, interval
        self.proc_samples: list[tuple[float, float, float]] = []  # (t, rss MB, process CPU %)
        self.gpu_samples: list[tuple[float, float, float]] = []  # (t, utilization %, memory used MB)
        self.smi_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._smi: subprocess.Popen | None = None

    def __enter__(self) -> Monitor:
        self._threads.append(threading.Thread(target=self._poll_process, daemon=True))
        if self.cuda:
            self._start_smi()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._smi.wait(5)
        for t in self._threads:
            t.join(5)

    def _poll_process(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        proc = psutil.Process()
        proc.cpu_percent(None)
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.proc_samples.append((perf(), proc.memory_info().rss / 2**20, proc.cpu_percent(None)))

    def _start_smi(self) -> None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            self.smi_error = "nvidia-smi not found"
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        cmd = [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
               "-lms", str(int(self.interval * 1000)), "-i", visible or "0"]
        try:
            self._smi = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            self.smi_error = str(exc)
            return

        def read() -> None:
            assert self._smi is not None and self._smi.stdout is not None
            for line in self._smi.stdout:
                parts = [p.strip() for p in line.split(",")]
                with contextlib.suppress(ValueError, IndexError):
                    self.gpu_samples.append((perf(), float(parts[0]), float(parts[1])))

        self._threads.append(threading.Thread(target=read, daemon=True))

    @staticmethod
    def mean_in(samples: list[tuple[float, float, float]], col: int, spans: list[tuple[float, float]],
                inside: bool = True) -> float | None:
        vals = [s[col] for s in samples if any(a <= s[0] < b for a, b in spans) == inside]
        return sum(vals) / len(vals) if vals else None


def peak_rss_mb() -> float | None:
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
