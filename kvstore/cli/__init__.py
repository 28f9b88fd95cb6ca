"""kvctl: the command line (``python -m kvstore.cli`` or the ``kvctl`` script)."""
