"""SQL storage for the workflow: tables, migrations, engines and the unit of work.

The domain (``workflow``) defines the ports; this package implements them and depends on it,
never the other way round.
"""
