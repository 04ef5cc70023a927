"""Returning free memory to the system: RSS falls after freeing many small blocks."""

from __future__ import annotations

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
