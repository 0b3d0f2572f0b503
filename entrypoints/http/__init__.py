"""The HTTP API: a FastAPI app over ``CaseService`` and ``EventService`` (docs/api.md).

``entrypoints.composition.http_app(settings, clock)`` builds it; nothing here creates an app
at import time. ``aftersales serve`` runs it under uvicorn.
"""
