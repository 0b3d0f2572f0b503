"""The ``aftersales`` command line: ``main.py`` mounts one module per command group, all sharing
``common.py`` (state, input, output, errors and exit codes)."""
