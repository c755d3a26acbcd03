"""Run manifests: what produced an output (config hash, git sha, versions, hardware). Never secrets."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess

from . import paths

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "lm_eval", "datasets")


def git_state() -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10)

    try:
        sha = run("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    hw = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": None, "gpu_memory_gb": None}
    try:
        with open("/proc/meminfo") as f:
            hw["ram_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        hw["ram_gb"] = None
    try:
        import torch

        hw["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            hw["gpu"] = f"{torch.cuda.device_count()} x {props.name}"
            hw["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    except ImportError:
        pass
    return hw


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def manifest(**extra) -> dict:
    return {**git_state(), "versions": versions(), "hardware": hardware(), **extra}
