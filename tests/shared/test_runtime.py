"""Runtime tuning shared by the services: GC, and the allocator's mmap threshold."""

from __future__ import annotations

import gc

from mercurystream.shared.runtime import GC_THRESHOLDS, pin_mmap_threshold, tune_gc


def test_tune_gc_freezes_startup_objects_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_mmap_threshold_pins_on_glibc() -> None:
    """Debian's Python links glibc: the pin applies there; elsewhere it says it did not, and nothing raises."""
    import platform

    applied = pin_mmap_threshold()
    assert applied == (platform.libc_ver()[0] == "glibc")
