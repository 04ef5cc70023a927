"""The DynamoDB serving store: live aggregates in one DynamoDB table, shared by every
processor and API process (``dynamodb://TABLE?region=REGION[&endpoint_url=URL][&shards=N]``).

Item design (one table, string keys ``pk`` / ``sk``, TTL attribute ``expires``; ``G`` is
a generation, one per rebuild; ``MINUTE`` and ``HOUR`` are epoch seconds, ``MINUTE``
written with 10 digits so that sort keys order by time)::

    pk             sk                  attributes
    meta           meta                gen, ready, start, newest, built, hours (NS),
                                       snap (M: partition -> largest batch id of the
                                       snapshot), offsets (M: "stream:partition" ->
                                       offset), version (counts writes), gens (counts
                                       generations), shards (G's shards per hour; none:
                                       1), and while a rebuild runs: next, closing,
                                       lock, lock_until
    b#KEY          b                   expires: the batch KEY was applied
    gG#rP#HOUR#S   MINUTE#KEY          im, cl, cv, ac (counts), rv (revenue), expires;
                                       rollups of projection P (index into PROJECTIONS),
                                       KEY = JSON [ad_id, campaign, platform, location],
                                       null where P drops the column
    gG#c#HOUR#S    MINUTE#EVENT_ID     t, k (event and click time, microseconds), a, c,
                                       p, l (ad, campaign, platform, location),
                                       s (latency seconds), expires: one conversion
    gG#i#SHARD     e#EVENT_ID          m (the conversion's MINUTE), expires; SHARD =
                                       crc32(event_id) % 16 (for re-attributions)
    gG#j           ORDER#PART          n (parts), d (bytes): a delta journaled while G is
                                       being rebuilt (ORDER: batch id, arrival time, key)

Hour shards: an hour's rollups of a projection, and its conversions, are spread over
``S`` partition keys, ``S = crc32(sort key) % shards`` (:class:`~.items.Layout`; with one
shard there is no ``#S``, the keys of tables written before), because DynamoDB serves at
most 1,000 write units per second per partition key and the current hour of the full
key takes all its writes. The same item always lands on the same shard, so ``ADD`` stays
exact. A read queries every shard of every hour it covers, in parallel; deleting an
hour or a generation deletes every shard. ``shards`` is fixed per generation and
recorded in ``meta``: writers and readers use the current generation's count, whatever
their own setting (``?shards=``, default :data:`~.items.HOUR_SHARDS`), which only a
rebuild applies, to the generation it builds.

A key (or event id) too long for a sort key is written as its SHA-256 and kept in the
attribute ``key``. Every number is a DynamoDB Number, an exact decimal of up to 38
digits: revenue sums (the warehouse's ``DECIMAL(38,4)``) are added by DynamoDB itself
(``ADD``) without rounding, times are integers of microseconds, and a latency is the
shortest decimal that reads back as the same float. Nothing is a binary float.

At most once per batch: a batch first claims its key (a conditional ``PutItem`` of
``b#KEY``, refused when the key is there and not expired: a replay changes nothing),
then adds its rows with one ``UpdateItem ... ADD`` per item (any number of items, in
parallel, no 25- or 100-item limit to mind; ``ADD`` commutes, so concurrent writers
need no locks), then records its offsets, newest minute and hours in ``meta`` in one
conditional update. A failure after the claim leaves the batch partly applied and its
offsets not recorded, which the caller repairs with a rebuild (as for Redis, see
:mod:`.sync`); the key stays claimed, so a retry never adds twice.

The rebuild protocol of :mod:`.base`: under the lock in ``meta`` a rebuild names its new
generation in ``next``; from then on every apply also journals its delta for it, in a
transaction conditioned on ``meta`` (``next`` is G and the journal not closed). The new
generation is written beside the current one (``BatchWriteItem``, 25 items per call),
then the journal is closed (``closing``), replayed for batches the snapshot does not
include, and ``meta`` switched to G in one conditional update: readers see the old or the
new content, never a mix (a read checks that the generation did not change while it
read, and reads again if it did). A writer that finds the journal closed waits for the
switch, then writes to G. An apply after the switch skips G when ``snap`` says G's
snapshot holds the batch. A crashed rebuilder's lock expires after
:data:`LOCK_SECONDS`.

Expiry: minutes older than the window are never read (reads start at the window start);
whole hours below it are deleted by the writer that moves the start past them. Every
data item carries ``expires`` (its write time plus :data:`DATA_TTL_SECONDS`), so
DynamoDB's TTL removes what nobody deletes (an old generation whose deletion failed, a
late write to one); a generation older than :data:`REBUILD_AFTER_SECONDS` (less than the
TTL) counts as not ready, so it is rebuilt before TTL could remove a live item.

Throttling (``ProvisionedThroughputExceededException``, ``ThrottlingException``) is
retried with exponential backoff and full jitter (:data:`ATTEMPTS` tries, :func:`backoff`),
and so are unprocessed (throttled) items of a ``BatchWriteItem``; any other failure (the
service unreachable, a request refused) raises :class:`ServingStoreError` at once, which
the caller logs: reads then use the warehouse, and the store is rebuilt once it answers.

Reads are cached per store client by (generation, ``version``, range, projection):
``version`` in ``meta`` counts the writes, so a view read again over an unchanged store
costs one ``meta`` read.

The package: :mod:`.items` (keys, values, ``meta``, the items of a delta), :mod:`.journal`,
:mod:`.store` (:class:`DynamoDBServingStore` and its opener) and :mod:`.cost` (the cost
model).
"""

from __future__ import annotations

from collections.abc import Sequence

from adpulse.serving.store.dynamodb.cost import (
    Capacity,
    apply_cost,
    item_size,
    partition_writes,
    stored_bytes,
)
from adpulse.serving.store.dynamodb.items import (
    ATTEMPTS,
    DATA_TTL_SECONDS,
    HOUR_SHARDS,
    LOCK_SECONDS,
    MAX_HOUR_SHARDS,
    REBUILD_AFTER_SECONDS,
    backoff,
)
from adpulse.serving.store.dynamodb.store import DynamoDBServingStore, open_dynamodb_store

__all__: Sequence[str] = [
    "ATTEMPTS",
    "DATA_TTL_SECONDS",
    "HOUR_SHARDS",
    "LOCK_SECONDS",
    "MAX_HOUR_SHARDS",
    "REBUILD_AFTER_SECONDS",
    "Capacity",
    "DynamoDBServingStore",
    "apply_cost",
    "backoff",
    "item_size",
    "open_dynamodb_store",
    "partition_writes",
    "stored_bytes",
]
