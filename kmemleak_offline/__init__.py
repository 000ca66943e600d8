"""kmemleak-offline: record kernel/user allocation events, find leaks offline."""

__version__ = "0.1.0"
