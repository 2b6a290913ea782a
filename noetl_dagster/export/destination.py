"""Export destinations: names without credentials, per-destination cursor files, one-line errors.

Example::

    without_credentials("clickhouse://noetl:s3cret@ch:8123/db")   # 'clickhouse://ch:8123/db'
    cursor_name("clickhouse", "clickhouse:chdb:///h/noetl_clickhouse/observability")
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|pass|pwd|api_key|apikey|token|secret)=)[^&]*")


def without_credentials(where: str) -> str:
    """A DSN or URL with user, password and secret query values removed (it names a destination)."""
    try:
        parts = urlsplit(where)
    except ValueError:
        return where
    if parts.netloc and "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return _SECRET_QUERY.sub(r"\1", urlunsplit(parts))


def cursor_name(sink: str, destination: str) -> str:
    """The CLI cursor file of ``sink`` writing to ``destination`` (``<sink>.cursor.json`` without one)."""
    if not destination:
        return f"{sink}.cursor.json"
    digest = hashlib.sha256(destination.encode()).hexdigest()[:12]
    return f"{sink}-{digest}.cursor.json"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (secrets masked), for an export that failed."""
    from noetl_dagster.core.secrets import redact

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."
