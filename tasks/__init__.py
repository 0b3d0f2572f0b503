"""The broker side: the Celery app (``tasks.app.create_app``), the embedded broker
(``tasks.spool``), the beat schedule, the task modules, the task names of effects
(``tasks.publish``) and the producers' ledger (``tasks.ledger``, ``tasks.resender``).

Importing this package builds nothing; the composition root (``entrypoints/composition.py``)
builds each process's app and the runtime its tasks read.
"""
