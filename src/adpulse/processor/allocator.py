"""Give memory that batches freed back to the operating system (glibc's allocator only).

NumPy arrays and Python objects come from glibc's malloc. Under a live run it keeps what
batches free in its arenas for reuse (100+ MB measured after 10 minutes of
``adpulse demo --rate 5000``, see docs/performance.md) instead of returning it, so RSS
stays at its high-water mark. ``malloc_trim(0)`` every so often returns the free pages;
it costs a few milliseconds. Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Final

#: Seconds between two releases in a processor (see Processor.process).
RELEASE_EVERY_SECONDS: Final = 30.0


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
