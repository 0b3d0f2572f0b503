"""``python -m entrypoints.cli``: the ``aftersales`` console script without its launcher."""

from entrypoints.cli.main import main

main()
