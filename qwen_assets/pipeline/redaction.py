"""Secrets out of everything people read or Dagster stores: messages, logs, metadata.

A key reaches the project in three ways besides its own variable: inside a URL
(``https://user:sk-...@host/v1``, a token in a git remote), inside a connection string's
options (``md:db?motherduck_token=...``), and echoed back by a server in an error message,
sometimes altered. Each is replaced by ``***`` wherever this project shows or records it.
"""

from __future__ import annotations

import re

# user[:password]@ in any scheme://
URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://)[^/@\s]+@")
# ?token=..., &password=..., motherduck_token=...
SECRET_OPTIONS = re.compile(r"(?i)\b([\w-]*(?:token|password|secret|key)=)[^&\s'\"]+")
# What API keys look like: sk-..., Bearer ..., and long opaque runs of letters and digits.
KEY_SHAPED = re.compile(
    r"(?i)\b(?:bearer\s+\S+|(?:sk|pk|rk|key)[-_][A-Za-z0-9_\-]{6,}|"
    r"(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,})"
)


def redact_credentials(text: str) -> str:
    """A URL's user and password, and a connection string's token options, as ``***``."""
    text = URL_CREDENTIALS.sub(r"\1***@", text)
    return SECRET_OPTIONS.sub(r"\1***", text)


def redact_secrets(text: str, *known: str | None) -> str:
    """``text`` with the ``known`` secrets, credentials in URLs and anything key-shaped
    replaced: for what a server says, which may echo a key or a near-copy of one."""
    for secret in known:
        if secret:
            text = text.replace(secret, "***")
    return KEY_SHAPED.sub("***", redact_credentials(text))
