"""The one exception of perf.data import, in a module of its own so every step can raise it."""


class PerfDataError(ValueError):
    """A file that cannot be imported (not perf.data, truncated, unsupported). One-line message."""
