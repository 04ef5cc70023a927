"""State kept across batches holds its own text, not the buffers of the batches it came
from (a Polars text column is a view that keeps every buffer of its source alive)."""

from __future__ import annotations

import polars as pl

from adpulse.processor.state import FrameState, own_strings


def text_bytes(frame: pl.DataFrame, column: str) -> int:
    """Bytes of the buffers behind ``column`` (views, and the data they point into)."""
    array = frame.to_arrow(compat_level=pl.CompatLevel.newest())[column]
    return sum(b.size for chunk in array.chunks for b in chunk.buffers() if b is not None)


def batch() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [f"event-{i:030d}" for i in range(100_000)],  # 36 characters
            "n": range(100_000),
            "short": ["Boston"] * 100_000,
        }
    )


def test_own_strings_copies_only_the_rows_kept() -> None:
    big = batch()
    kept = big.filter(pl.col("n") % 10_000 == 0)
    assert text_bytes(kept, "event_id") >= 3_600_000  # the view keeps the whole batch
    owned = own_strings(kept)
    assert owned.rows() == kept.rows()
    assert owned.schema == kept.schema
    assert text_bytes(owned, "event_id") == 10 * 16 + 10 * 36  # views + their own text
    assert own_strings(kept.clear()).height == 0
    nulls = pl.DataFrame({"s": ["a" * 20, None]})
    assert own_strings(nulls).rows() == [("a" * 20,), (None,)]


def test_frame_state_keeps_its_own_text() -> None:
    state = FrameState(("event_id", "n"))
    for _ in range(3):
        state.add(batch().filter(pl.col("n") < 2))
    frame = state.frame()
    assert frame is not None and frame.height == 6
    assert text_bytes(frame, "event_id") == 6 * 16 + 6 * 36
    state.replace(frame.filter(pl.col("n") == 1))
    kept = state.frame()
    assert kept is not None and kept["n"].to_list() == [1, 1, 1]
    assert text_bytes(kept, "event_id") == 3 * 16 + 3 * 36
