"""Bounded echoes: how much of what a client sent may appear in an answer or a log record.

An error message that quotes the client helps them find their mistake, but the
whole input (up to 4 KB of request line, or more) in every response and every
log record costs bandwidth and log storage and hands an attacker a way to fill
both. So an answer or a record quotes at most 40 characters of client input and
elides the rest (README "HTTP API").
"""

from __future__ import annotations

ECHO_LIMIT = 40
_ELLIPSIS = "..."


def bounded(text: str) -> str:
    """`text` if it has at most ECHO_LIMIT characters, else its first ECHO_LIMIT and '...'.

    The ellipsis is not client input, so the quote itself keeps ECHO_LIMIT characters.
    """
    if len(text) <= ECHO_LIMIT:
        return text
    return text[:ECHO_LIMIT] + _ELLIPSIS


def quoted(text: str) -> str:
    """`bounded(text)` as a Python literal (quotes, control characters escaped)."""
    return repr(bounded(text))
