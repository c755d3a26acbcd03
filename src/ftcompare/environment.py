"""The process environment every stage sets before Hugging Face libraries are imported (setup_environment), the
allocator setting of the evaluate stage (tune_allocator), and the exit of a `python -m` entry point (exit_process)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import NoReturn

from . import paths

# glibc malloc (Linux): keep freed memory for reuse instead of handing it back to the kernel. Its defaults return
# the top of the heap and every block over a moving threshold to the kernel when freed, so each forward's fresh
# activations (MBs each, hundreds per forward) are page-faulted and zeroed again. The evaluate stage sets it
# (bench/eval_bench.py with and without FTC_MALLOC_TUNING=0 shows the gain; README, Speed). Training does not: its
# CPU memory probe reads resident memory during steps, and memory kept after being freed outside them would count.
# FTC_MALLOC_TUNING=0 keeps glibc's defaults.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def setup_environment(offline: bool) -> None:
    """Project-local HF cache; offline experiments never reach a hub. Must run before HF libraries import."""
    os.environ.setdefault("HF_HOME", str(paths.HF_HOME))
    if offline:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def tune_allocator() -> bool:
    """glibc: no memory mapped per allocation (M_MMAP_MAX 0: every block from the heap), the heap never trimmed,
    and grown 64 MiB at a time. Peak memory is unchanged; memory freed after the peak stays with the process.
    -> whether it applied (False: FTC_MALLOC_TUNING=0, or not glibc)."""
    if os.environ.get("FTC_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(opt, val) == 1 for opt, val in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20)))


def exit_process(code: int) -> NoReturn:
    """End a `python -m` entry point with exit status `code`. CPython run with -m exits by SIGINT instead, whatever
    the code, once a KeyboardInterrupt (Ctrl-C, or make's SIGTERM turned into one) has passed through an exec() or
    eval() of a string, even one that was caught: that leaves _PyRuntime.signals.unhandled_keyboard_interrupt set,
    and only the next such call clears it. A Ctrl-C landing while a library runs exec() (a dataclass being made)
    does that. The eval below clears it."""
    eval("0")
    raise SystemExit(code)
