"""adpulse: real-time ad engagement analytics.

Layers, in the direction of flow: ``sources`` (generator, file replay) -> ``transport``
(partitioned log) -> ``processor`` (vectorized micro-batch steps) -> ``storage``
(warehouse) -> ``serving`` (the one query layer) -> ``operations`` (demo, bench).
"""

__version__ = "0.1.0"
