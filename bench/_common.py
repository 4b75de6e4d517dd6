"""Timing and peak-memory helpers shared by the benchmarks."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds over `repeats` runs after `warmup` runs."""
    return timings_ms(fn, device, repeats, warmup)[0]


def timings_ms(fn, device, repeats: int = 10, warmup: int = 2) -> tuple[float, float]:
    """(median wall ms, median process-CPU ms) of fn() over `repeats` runs after `warmup`.

    The CPU time (all threads of this process) is a load-independent companion to the
    wall time on a shared machine."""
    for _ in range(warmup):
        fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def load_average() -> float | None:
    """1-minute load average (other processes competing for the CPU), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _read_status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0   # kB -> MiB
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block in MiB: CUDA max_memory_allocated on GPU; on CPU the process's
    peak resident set size (VmHWM, reset through /proc/self/clear_refs on Linux) minus the
    resident size at the start (``extra``), and the absolute peak (``total``)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.total = self.extra = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")                           # reset the peak RSS counter
            except OSError:
                pass
            self.base = _read_status("VmRSS") or float("nan")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.total = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.total = _read_status("VmHWM") or float("nan")
        self.extra = self.total - self.base
        return False


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
