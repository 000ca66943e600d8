"""`python -m kmemleak_offline ...` is the same as `kmemleak-offline ...`."""

from .cli import run

run()
