"""`python -m kmemleak_offline ...` is the same as `kmemleak-offline ...`."""

import sys


def entry() -> None:
    """The console script. Ctrl-C while the CLI's modules load (a few hundred ms) ends with one
    line and status 130, like Ctrl-C anywhere else, not a traceback."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("kmemleak-offline record: interrupted before recording started\n"
                         if sys.argv[1:2] == ["record"] else "kmemleak-offline: interrupted\n")
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    entry()
