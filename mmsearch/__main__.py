"""``python -m mmsearch`` runs the command line, like the ``mmsearch`` script."""

from mmsearch.cli.main import main

main(prog_name="mmsearch")
