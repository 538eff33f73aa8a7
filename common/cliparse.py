"""Command-line parsing shared by FedSilo's console scripts.

argparse prints the whole usage block (a dozen lines for fl-server) before its error; FedSilo's
rule for bad input is one clear line on stderr, so the parsers here print only the error.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `PROG: error: MESSAGE (see PROG --help)`.

    Exit code 2, as argparse and FedSiloError both use. Subparsers inherit the class.
    """

    def error(self, message: str):
        message = " ".join(message.split())  # argparse messages can wrap choices over lines
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def port_arg(text: str) -> int:
    """argparse type for a TCP port, 1-65535 (socket calls fail with a traceback outside it)."""
    port = port_or_zero_arg(text)
    if port == 0:
        raise argparse.ArgumentTypeError("invalid port 0: use a number from 1 to 65535")
    return port


def port_or_zero_arg(text: str) -> int:
    """argparse type for a TCP port where 0 means the tool's default (see the option's help)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use a number from 1 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: use a number from 1 to 65535")
    return port


def positive_int(text: str) -> int:
    """argparse type for a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: use a whole number of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {value}: use a whole number of at least 1")
    return value
