"""``python -m handlers.stream_recovery <command>``: the operator CLI (see ``cli.py``)."""

from handlers.stream_recovery.cli import run

run()
