"""One error type for everything an operator can fix, and the CLI wrapper that prints it."""

import functools
import sys


class FedSiloError(Exception):
    """A problem the operator can fix; its message is one line, shown without a traceback."""


def cli_entry(prog: str):
    """Wrap a console-script main(): a FedSiloError becomes one line on stderr and exit 2."""

    def decorate(main):
        @functools.wraps(main)
        def wrapper(argv=None):
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
