"""The HTTP query API: every number of the query layer as JSON, plus a live SSE feed.

One topic per module: :mod:`.params` (query parameters, the filters dependency),
:mod:`.encoding` (JSON of frames, money and times; the error body), :mod:`.errors`
(error answers), :mod:`.feed` (the live SSE feed), :mod:`.middleware` (the layers around
the routes and their order; shared answers and the shortcut for a request seen before),
:mod:`.routes` (the endpoints as routers), :mod:`.server` (socket, uvicorn, limits,
stopping) and :mod:`.app` (:func:`create_app`, composing them). ``adpulse.serving.api``
re-exports the public names.

Load: time ranges are read as whole minutes (:func:`~adpulse.serving.queries.minute_aligned`),
answers are shared between identical requests for up to ``api_cache_seconds``
(:mod:`adpulse.serving.cache`), and warehouse queries run on a pool of
``api_query_threads`` threads (plus one for the live feed), so that readers cannot take
every core from the processor that shares the process.
"""
