"""Stored text as it may be written to a terminal (issue 31): what a view prints from Redis or
from the exchange passes :func:`term_safe`, so that it can neither move the cursor, clear the
screen, set the window title nor forge a line."""

from __future__ import annotations

#: What :func:`term_safe` escapes: every C0 control (U+0000–U+001F, ESC included: no CSI/OSC
#: sequence reaches the terminal whole), DEL, every C1 control (U+0080–U+009F, CSI U+009B among
#: them), and the invisible direction and line controls (U+061C, U+200E/F, U+2028/9, U+202A–E,
#: U+2066–9) that make a terminal show text in another order than it is stored ("Trojan Source",
#: CVE-2021-42574). Each becomes its Python escape (``\x1b``, ``\u202e``).
_TERM_ESCAPES = {
    c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
    for c in (
        *range(0x20),
        0x7F,
        *range(0x80, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
} | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_TERM_ESCAPES_MULTILINE = {c: e for c, e in _TERM_ESCAPES.items() if c not in (0x09, 0x0A)}


def term_safe(value: object, multiline: bool = False) -> str:
    """``str(value)`` as it may be written to a terminal: the controls of :data:`_TERM_ESCAPES`
    (an escape sequence in a plan's reason, an exchange error message, an account name read
    back from Redis) shown as their Python escapes, so that stored text can neither move the
    cursor, clear the screen, set the window title nor forge a line (``\\n``, ``\\r`` and
    ``\\t`` shown as those). ``multiline``: keep newlines and tabs (a report formatted over
    several lines); otherwise they are escaped too (one stored field, one line). Everything
    else, non-ASCII text included, is kept."""
    return str(value).translate(_TERM_ESCAPES_MULTILINE if multiline else _TERM_ESCAPES)
