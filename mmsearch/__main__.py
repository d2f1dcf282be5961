"""``python -m mmsearch`` runs the command line, like the ``mmsearch`` script."""

from mmsearch.cli.main import main

if __name__ == "__main__":
    main(prog_name="mmsearch")
