"""glibc malloc settings: one for CPU training under ``train.cpu_heap: release``, one for
everything else (evaluation).

Training under ``release`` sets a fixed 1 MiB mmap threshold (``engine.return_freed_memory_to_os``)
so that its peak RSS follows the live tensors (``reuse``, the default, leaves glibc's dynamic
threshold alone). Outside training that setting is costly: every
block of 1 MiB or more is a fresh mapping, faulted in page by page (a PET evaluation of
2,189 posts with MiniLM: 66 million minor faults). glibc cannot switch its dynamic
threshold back on, so :func:`evaluation_setting` fixes the threshold at the dynamic
one's ceiling (32 MiB on 64-bit) and the trim threshold at twice that, where the dynamic
rule would have taken them; :func:`lifted` wraps evaluation inside training and goes back
to the training setting afterwards, trimming what evaluation freed.
"""
from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRAINING_MMAP_THRESHOLD = 1 << 20
TRAINING_TRIM_THRESHOLD = 128 << 10  # glibc's default
DYNAMIC_MMAP_THRESHOLD_MAX = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger blocks are always mapped
EVALUATION_MMAP_THRESHOLD = DYNAMIC_MMAP_THRESHOLD_MAX
EVALUATION_TRIM_THRESHOLD = 2 * EVALUATION_MMAP_THRESHOLD


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def training_setting() -> bool:
    """Blocks of 1 MiB or more come from mmap and go back to the OS when freed."""
    return _set(TRAINING_MMAP_THRESHOLD, TRAINING_TRIM_THRESHOLD)


def evaluation_setting() -> bool:
    """Blocks up to 32 MiB come from the heap and are reused, as under glibc's dynamic rule."""
    return _set(EVALUATION_MMAP_THRESHOLD, EVALUATION_TRIM_THRESHOLD)


@contextmanager
def lifted(active: bool):
    """The evaluation setting inside the block when ``active`` (the training setting is in
    force); afterwards the training setting again, with the heap's free pages returned."""
    if not active:
        yield
        return
    evaluation_setting()
    try:
        yield
    finally:
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        training_setting()
