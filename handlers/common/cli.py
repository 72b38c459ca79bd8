"""What every operator CLI of this product shares: usage errors, one-line errors, exit codes.

Exit 2 for a usage error (with a pointer to --help), 1 for an expected failure (one line on
stderr: the message) or an AWS/database/OS failure (one line: its type and message), never a
traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import IO, NoReturn


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error raised (and reported once by ``run_command``) instead of exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_command(
    prog: str,
    command: Callable[[], int],
    *,
    stderr: IO[str],
    expected: tuple[type[BaseException], ...],
    external: tuple[type[BaseException], ...],
) -> int:
    """Run ``command`` (parsing included) and turn its failures into one stderr line and an exit code."""
    try:
        return command()
    except UsageError as exc:
        stderr.write(f"{prog}: usage error: {one_line(exc)} (see --help)\n")
        return 2
    except expected as exc:
        stderr.write(f"{prog}: error: {one_line(exc)}\n")
        return 1
    except external as exc:
        stderr.write(f"{prog}: error: {type(exc).__name__}: {one_line(exc)}\n")
        return 1
