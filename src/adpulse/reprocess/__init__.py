"""``adpulse reprocess``: the streaming semantics recomputed over history on Apache Spark.

Needs the ``spark`` extra (``pip install 'adpulse[spark]'``: PySpark and a Java 17+
runtime). See docs/reprocess.md.
"""
