"""One error type for everything an operator can fix, and the CLI wrapper that prints it."""

import functools
import os
import signal
import sys


class FedSiloError(Exception):
    """A problem the operator can fix; its message is one line, shown without a traceback."""


def _interrupt_once(signum, frame):
    """SIGTERM or Ctrl-C: interrupt once, then ignore both so the cleanup (stopping every
    process this tool started) is not itself interrupted."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def cli_entry(prog: str):
    """Wrap a console-script main(): a FedSiloError becomes one line on stderr and exit 2, and
    SIGTERM unwinds like Ctrl-C, so `finally` / `with` blocks stop what the tool started.

    Every file a FedSilo tool or its children write (state, logs, keys, databases) is its user's
    alone (umask 077), and no child Python imports from its working directory (PYTHONSAFEPATH,
    as `python -P`): a `server/` or `common/` folder where a tool is started is never run."""

    def decorate(main):
        @functools.wraps(main)
        def wrapper(argv=None):
            if argv is None:  # the process is the tool (a caller in-process keeps its own settings)
                os.umask(0o077)
                os.environ["PYTHONSAFEPATH"] = "1"
            signal.signal(signal.SIGTERM, _interrupt_once)
            signal.signal(signal.SIGINT, _interrupt_once)
            try:
                return main(argv)
            except FedSiloError as err:
                print(f"{prog}: error: {err}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                sys.exit(130)

        return wrapper

    return decorate


def printable(text: str, limit: int = 60) -> str:
    """Log content in a message: escape control characters (no terminal tricks), keep it short."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"
