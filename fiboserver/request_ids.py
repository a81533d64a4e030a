"""Request ids: the caller's own when it is safe to echo, else a new UUID4.

Shared by the app's access records (fiboserver.app.access) and the answers the
worker writes without the app (fiboserver.worker.refusals): every response
carries `X-Request-ID`, whoever wrote it.
"""

from __future__ import annotations

import os
import re

HEADER = "X-Request-ID"
# An incoming id is echoed only when it is safe to put in logs and headers.
_VALID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# The first hex digit of a UUID's 9th byte carries the RFC 4122 variant (binary
# 10xx): keep the random low two bits, set the top two.
_VARIANT_DIGIT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_request_id() -> str:
    """A random UUID4 in canonical form, as `str(uuid.uuid4())` gives it.

    Built from the hex of 16 random bytes with the version and variant digits
    set, without a UUID object: cheaper, on every request that brings no id of
    its own (docs/performance.md).
    """
    digits = os.urandom(16).hex()
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{_VARIANT_DIGIT[digits[16]]}{digits[17:20]}-{digits[20:]}"
    )


def choose_request_id(incoming: str | None) -> str:
    """The caller's id when it is 1 to 128 of [A-Za-z0-9._-], else a new UUID4."""
    if incoming is not None and _VALID.fullmatch(incoming):
        return incoming
    return new_request_id()
