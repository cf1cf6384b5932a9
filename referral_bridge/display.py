"""Making text fit to show an operator or write to a log: no control characters, no secrets.

Operator tools print values that came from outside the bridge: header values a producer set,
routing keys, ids, exception texts. A value holding ANSI escapes could rewrite the operator's
terminal (hide a line, fake an "OK"); one holding a phone number or a date of birth would
disclose it without the audited `--reveal`. A URL can carry a password or a token in its user
part or its query string.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import parse_qsl, urlsplit

from referral_bridge.logging import scrub

__all__ = ["MASK", "escape_controls", "mask_url", "safe_text"]

MASK = "***"
#: Query parameters whose values are settings, never secrets; every other value is masked.
_HARMLESS_QUERY_KEYS = frozenset(
    {
        "application_name",
        "channel_max",
        "connect_timeout",
        "frame_max",
        "heartbeat",
        "ssl",
        "sslmode",
        "target_session_attrs",
        "timeout",
    }
)
#: Control, format (bidirectional overrides, zero-width) and line/paragraph separator characters.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_DEFAULT_LIMIT = 500
#: ANSI escape sequences, 7-bit (ESC [ ... m) and 8-bit (CSI) forms.
_ANSI = re.compile(r"(?:\x1b[@-Z\\-_]|[\x80-\x9a\x9c-\x9f]|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~])")


def escape_controls(text: str) -> str:
    r"""Every control or format character as a visible escape (``\x1b``, ``\u202e``)."""
    if text.isprintable():
        return text
    return "".join(
        ascii(char)[1:-1] if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES else char
        for char in text
    )


def safe_text(value: object, *, limit: int = _DEFAULT_LIMIT) -> str:
    """`value` as text an operator may see: controls escaped, personal patterns scrubbed, and cut
    to `limit` characters."""
    # An escape sequence becomes a space, so the scrubber sees a phone number it sat against.
    text = scrub(escape_controls(_ANSI.sub(" ", str(value))))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mask_url(url: str) -> str:
    """`url` with the password and the value of every query parameter that is not a known
    setting masked; a URL that cannot be parsed is masked whole."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if has_password else f"{userinfo}@{hostport}"
    query = "&".join(
        f"{key}={value if key.lower() in _HARMLESS_QUERY_KEYS else MASK}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    # Rebuilt by hand: urlunsplit drops the empty authority of sqlite:////absolute/path.
    head = f"{parts.scheme}:" if parts.scheme else ""
    if url[len(head) :].startswith("//"):
        head += f"//{netloc}"
    tail = (f"?{query}" if parts.query else "") + (f"#{MASK}" if parts.fragment else "")
    return escape_controls(head + parts.path + tail)
