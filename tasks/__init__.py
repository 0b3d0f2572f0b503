"""The Celery runtime: the app (``tasks.app.create_app``), the processes (``tasks.worker``),
the embedded broker (``tasks.spool``), the beat schedule and the task modules.

Importing this package builds nothing; each process builds its app once from its settings.
"""
