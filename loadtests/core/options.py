"""Checked option values for the CLI: a bad value is one error line and exit 2,
before any database is touched (``--users 0`` used to run for the whole
warm-up and duration, then FAIL on an empty report)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn, TypeVar

N = TypeVar("N", int, float)


def at_least(low: N) -> Callable[[str], N]:
    """An argparse ``type`` accepting numbers of ``low``'s type that are >= ``low``."""
    kind = type(low)

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def positive(text: str) -> float:
    """An argparse ``type``: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def port(text: str) -> int:
    """An argparse ``type``: a TCP port, or 0 for off."""
    value = at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port (0-65535), got {text}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")
