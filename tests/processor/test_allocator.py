"""Returning free memory to the system: RSS falls after freeing many small blocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adpulse.processor.allocator import release_free_memory


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_free_pages_go_back_to_the_system() -> None:
    release_free_memory()
    # 200 MB of 64 KiB blocks (below glibc's mmap threshold: they come from its heap),
    # all freed but the last one, which pins the top of the heap.
    blocks = [bytearray(64 * 1024) for _ in range(3200)]
    before = _rss_kb()
    del blocks[:-1]
    kept = _rss_kb()
    assert release_free_memory()
    after = _rss_kb()
    assert kept > before - 50_000  # glibc kept the freed blocks
    assert after < kept - 150_000  # and gave them back when asked


#: Eight threads allocate at once, then the process counts glibc's arenas (malloc_info).
_ARENAS_SCRIPT = """
import ctypes, sys, tempfile, threading
from adpulse.processor.allocator import limit_arenas
if sys.argv[1] != "-":
    assert limit_arenas(int(sys.argv[1]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p] * 2
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(8)
def work():
    blocks = [libc.malloc(1000) for _ in range(1000)]
    together.wait()
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(open(out.name).read().count("<heap nr="))
"""


def _arenas(limit: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, limit], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_threads_share_the_limited_arenas() -> None:
    assert _arenas("-") > 2  # glibc's default: an arena per thread (up to 8 per core)
    assert _arenas("2") == 2
    assert _arenas("1") == 1
