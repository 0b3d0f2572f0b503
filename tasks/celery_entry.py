"""For the ``celery`` command line only: ``celery -A tasks.celery_entry worker``.

The celery CLI needs a module-level app; this is the one module that builds one on import, from
the environment's settings. Our own code calls ``tasks.app.create_app`` (or ``tasks.worker``).
"""

from __future__ import annotations

from config.settings import get_settings
from tasks.app import create_app

celery = create_app(get_settings())
