"""CPU cost of the dedupe state with and without its memory budget, in ``adpulse bench``'s
shape: 3M keys per event-time day, batches of 500k keys, 2 % re-sends of recent keys, a
24-hour horizon. The dedupe state alone (no decode, no commit); CPU time, so a loaded
machine changes little.

Run: ``.venv/bin/python benchmarks/dedupe_spill.py --keys 10000000 --budget 134217728``
(``--budget 0``: unbounded, nothing spilled). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from adpulse.contracts import Stream
from adpulse.processor.state import DedupeState

KEYS_PER_HOUR = 125_000
BATCH = 500_000
_A = np.uint64(0x9E3779B97F4A7C15)
_B = np.uint64(0xC2B2AE3D27D4EB4F)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--budget", type=int, default=128 * 1024 * 1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="adpulse-spill-"))
    state = DedupeState(args.budget, root if args.budget else None)
    keys = state.sets[Stream.IMPRESSIONS]
    rng = np.random.default_rng(3)
    cpu = spill = 0.0
    peak = done = 0
    while done < args.keys:
        n = min(BATCH, args.keys - done)
        ids = np.arange(done, done + n, dtype=np.uint64)
        resent = rng.integers(max(0, done - 200_000), done + 1, n // 50).astype(np.uint64)
        ids = np.unique(np.concatenate([ids, resent]))
        hi, lo = ids * _A, ids * _B
        hour = (ids // np.uint64(KEYS_PER_HOUR)).astype(np.int32)
        newest = int(hour.max())
        cutoff = np.full(len(ids), newest - 24, np.int32)
        t0 = time.process_time()
        keys.check_and_add(hi, lo, hour, cutoff, newest - 24)
        t1 = time.process_time()
        state.bound(newest - 24, newest)
        t2 = time.process_time()
        cpu += t2 - t0
        spill += t2 - t1
        peak = max(peak, state.nbytes)
        done += n
    print(
        f"budget {args.budget >> 20} MiB, {args.keys:,} keys: dedupe CPU {cpu:.2f} s"
        f" ({cpu / args.keys * 1e6:.2f} us a key; spills {spill:.2f} s);"
        f" {len(keys.table):,} keys in memory, {state.spilled_keys:,} on disk;"
        f" peak state {peak >> 20} MB;"
        f" max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB"
    )
    state.close()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
