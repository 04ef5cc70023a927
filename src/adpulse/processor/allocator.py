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


#: glibc's malloc arenas a process may create (see :func:`limit_arenas`).
ARENAS: Final = 2
#: ``mallopt``'s parameter number for the arena limit (glibc's ``M_ARENA_MAX``).
_M_ARENA_MAX: Final = -8


@cache
def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt  # type: ignore[no-any-return]


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc's malloc create at most ``arenas`` arenas (``MALLOC_ARENA_MAX``); False
    where that is not possible.

    By default every thread that allocates while the others hold their arenas gets one
    of its own, up to 8 per core, and each keeps what was freed in it: under
    ``adpulse demo`` (processor, producer, API and DuckDB's threads) that was 25-55 MB
    freed but kept between two :func:`release_free_memory` calls, against 7-35 MB with
    two arenas (docs/performance.md, "Memory under live load"). Threads that already
    have an arena keep it, so call this before starting threads: the command line does,
    first thing (:mod:`adpulse.cli.start`).
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
