"""Interpreter settings for a service whose hot path allocates short-lived containers by the batch."""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 20)
"""Young-generation collection every 50,000 container allocations instead of 700."""


def tune_gc() -> None:
    """Collect rarely, and never again walk what exists at startup.

    A pipeline service allocates a few dicts and lists per event and almost never a cycle, so the
    default threshold runs a young collection every few hundred events for nothing, and every
    so often a full one that walks every object the process holds: a pause of milliseconds in the
    middle of a batch, which is a latency tail. Frozen startup objects drop out of every later
    collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number for the mmap threshold."""
MMAP_THRESHOLD_BYTES = 128 * 1024


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep large allocations in their own mappings, returned to the system when freed.

    glibc raises its mmap threshold to the size of each large block freed, up to 32 MiB, so after a
    burst of 200 KB events every later one is carved from the heap, which fragments and never
    shrinks: resident memory then sits at several times what the byte bounds hold. Setting the
    threshold once turns that adjustment off. Returns whether it applied (glibc only).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
