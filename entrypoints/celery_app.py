"""For the ``celery`` command line only: ``celery -A entrypoints.celery_app worker``.

The celery CLI needs a module-level app; this is the one module that builds one on import, from
the environment's settings, through the composition root. Our own code calls
``composition.worker_app`` (``aftersales worker``, ``beat``, ``run``: ``entrypoints.worker``).
"""

from __future__ import annotations

from entrypoints.composition import load_settings, worker_app

celery = worker_app(load_settings())
