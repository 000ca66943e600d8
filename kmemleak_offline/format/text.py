"""Text that reaches a terminal: values from files and users shown, never obeyed."""

from __future__ import annotations

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}


def printable(text: str) -> str:
    """Control characters (an escape sequence in a spec, a hostname, a comm) shown as \\xNN
    instead of reaching the terminal; tabs and newlines kept."""
    return text.translate(_CONTROL)
