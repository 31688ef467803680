"""What the benchmarks report about the machine, and how they measure a phase's peak memory."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil
import torch

from medti.resources import peak_rss_mb

__all__ = ["cpu_name", "machine", "machine_description", "peak_rss_mb", "proc_status_mb", "reset_rss_peak"]


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine() -> dict:
    """The machine as figures: CPU, cores, GPU (or None) and torch version."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def machine_description(device: torch.device) -> str:
    """The machine in one line: the GPU with CUDA and torch versions, or the CPU, cores and memory."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return (f"{cpu_name()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"torch {torch.__version__} (CPU)")


def reset_rss_peak() -> float | None:
    """Reset this process's peak RSS (VmHWM, and ru_maxrss, on Linux), so that from here on it is the peak of
    what follows; return the RSS now (MB), or None where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return round(proc_status_mb("VmRSS"), 1)
    except OSError:
        return None


def proc_status_mb(key: str) -> float:
    """A memory figure of /proc/self/status (``VmRSS``, ``VmHWM``...) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{key} not in /proc/self/status")
