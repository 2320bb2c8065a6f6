"""``python -m ovrsisbench`` = the ``ovrsisbench`` command."""

from ovrsisbench.cli import main

main()
