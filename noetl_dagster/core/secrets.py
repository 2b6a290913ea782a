"""Secrets of this process: a registry of resolved secret values and their redaction.

Every secret a credential, keychain entry or tool hands to a step is registered here, so that
:func:`redact` can mask it (plain, upper/lower case, base64 and URL-encoded forms) in any text
before it is shown, and :func:`redact_value` in any result. Also the environment source of
credentials (``NOETL_CREDENTIAL_<ALIAS>``), which needs nothing of Dagster.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import quote, quote_plus, unquote, urlsplit

from noetl_dagster.errors import ToolError

#: the prefix of credential environment variables
ENV_PREFIX = "NOETL_CREDENTIAL_"
#: values shorter than this are not redacted (masking "ab" everywhere would garble text)
MIN_SECRET_LENGTH = 4
MASK = "***"

#: field names whose values are secrets (searched in the lower-cased name)
_SECRET_FIELD = re.compile(
    r"pass|pwd|secret|token|api_?key|private_?key|access_?key|credential|cookie|signature"
    r"|^key$|^value$|^auth$"
)
#: ...except these, which name or describe a secret (``token_type``, ``api_key_header``)
_NOT_SECRET = re.compile(r"(_type|_name|_id|header|_file|_path)$")
#: fields holding a connection URL/DSN: only the password inside is a secret
_CONNECTION_FIELD = re.compile(r"dsn|connection_string|conn_str|conninfo|url|uri")
_CONNINFO_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")

_LOCK = threading.Lock()
_SECRETS: set[str] = set()
_PATTERN: re.Pattern[str] | None = None


def is_secret_field(name: str) -> bool:
    """Whether a credential field holds a secret (``password``, ``db_password``, ``token``...)."""
    name = name.lower()
    return bool(_SECRET_FIELD.search(name)) and not _NOT_SECRET.search(name)


def register_connection_secret(value: Any) -> None:
    """Register the password inside a connection URL or libpq ``key=value`` string."""
    if not isinstance(value, str):
        return
    try:
        parts = urlsplit(value)
        if parts.scheme and parts.password:
            register_secret(unquote(parts.password))
            return
    except ValueError:
        pass
    match = _CONNINFO_PASSWORD.search(value)
    if match:
        raw = match.group(1)
        if raw.startswith("'"):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        register_secret(raw)


def register_secret(value: Any) -> None:
    """Remember ``value`` (and its URL-encoded forms) so :func:`redact` masks it from now on.

    Tools call this for secrets they receive other than through a credential, e.g. a literal
    ``password:`` or an ``Authorization`` header in a playbook.
    """
    global _PATTERN
    if value is None or isinstance(value, bool):
        return
    text = str(value)
    if len(text) < MIN_SECRET_LENGTH:
        return
    forms = secret_forms(text)
    with _LOCK:
        if forms <= _SECRETS:
            return
        _SECRETS.update(forms)
        ordered = sorted(_SECRETS, key=len, reverse=True)
        # case-insensitive: upper/lower/title-cased copies and %2f/%2F escapes match too
        _PATTERN = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE)


def secret_forms(text: str) -> set[str]:
    """The encodings of a secret that :func:`redact` masks (case-insensitively).

    The text itself (so upper/lower-cased copies), its URL-quoted forms, and its base64 forms
    (standard and URL-safe, with and without padding, plus the part that does not depend on
    what precedes or follows it, so a secret base64-encoded inside a longer text such as
    ``user:password`` is masked as well).
    """
    forms = {text, quote(text, safe=""), quote_plus(text)}
    for variant in {text, text.upper(), text.lower()}:
        raw = variant.encode()
        for k in range(3):  # the secret at each alignment inside a longer encoded text
            encoded = base64.b64encode(b"\0" * k + raw).decode()
            start = (0, 2, 3)[k]
            end = 4 * ((k + len(raw)) // 3)
            core = encoded[start:end]
            if len(core) >= 8:
                forms.update({core, core.replace("+", "-").replace("/", "_")})
            if k == 0:
                forms.update({encoded, encoded.rstrip("="),
                              base64.urlsafe_b64encode(raw).decode(),
                              base64.urlsafe_b64encode(raw).decode().rstrip("=")})
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def redact(text: Any) -> str:
    """``text`` with every secret resolved so far in this process replaced by ``***``.

    Example::

        CredentialsResource(credentials={"api": {"token": "s3cr3t-token"}}).resolve("api")
        redact("401 for token s3cr3t-token")   # '401 for token ***'
    """
    text = "" if text is None else str(text)
    pattern = _PATTERN
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside a value; keys are kept.

    Walks mappings, lists and tuples; Arrow tables and record batches get their string
    columns masked (a new table, only when a value matches); other objects pass unchanged.
    A value without any secret is returned as it is (the same object).
    """
    pattern = _PATTERN
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub(MASK, value) if pattern.search(value) else value
    if isinstance(value, Mapping):
        out = {k: redact_value(v) for k, v in value.items()}
        return value if all(out[k] is v for k, v in value.items()) else out
    if isinstance(value, (list, tuple)):
        items = [redact_value(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    if type(value).__module__.startswith("pyarrow") and hasattr(value, "schema"):
        return _redact_arrow(value, pattern)
    return value


def _redact_arrow(table: Any, pattern: re.Pattern[str]) -> Any:
    """An Arrow table/batch with every secret in its string columns masked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    regex = "(?i)" + pattern.pattern
    columns, changed = [], False
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            if pc.any(pc.match_substring_regex(column, regex)).as_py():
                column = pc.replace_substring_regex(column, regex, MASK)
                changed = True
        columns.append(column)
    if not changed:
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(columns, schema=table.schema)
    return pa.Table.from_arrays(columns, schema=table.schema)


_F = TypeVar("_F", bound=Callable[..., Any])


def secret_safe(func: _F) -> _F:
    """Decorator: a :class:`ToolError` leaves ``func`` redacted and without chained exceptions.

    A driver's exception (kept as ``__context__`` even with ``raise ... from None``) may quote
    a connection string or a URL; re-raising outside the ``except`` block drops the chain, so
    a traceback printer cannot show it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ToolError as exc:
            error: ToolError = exc
        try:
            clean = type(error)(redact(str(error)))
        except Exception:  # noqa: BLE001 - a subclass with another constructor
            clean = ToolError(redact(str(error)))
        raise clean

    return wrapper  # type: ignore[return-value]


def env_name(alias: str) -> str:
    """``NOETL_CREDENTIAL_<ALIAS>``: upper-cased, every non-alphanumeric character as ``_``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", alias).upper()


def credential_from_env(alias: str) -> dict[str, Any] | None:
    """Fields of credential ``alias`` from ``NOETL_CREDENTIAL_<ALIAS>`` (JSON) and ``..__<FIELD>``; None if unset."""
    base = env_name(alias)
    fields: dict[str, Any] | None = None
    raw = os.environ.get(base)
    if raw is not None:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            fields = {str(k): v for k, v in parsed.items()}
        else:
            # not a JSON object: the whole value is the secret (a token, a DSN...)
            register_secret(raw)
            fields = {"value": raw}
    prefix = base + "__"
    for name, value in os.environ.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            fields = fields if fields is not None else {}
            fields[name[len(prefix):].lower()] = value
    return fields


def register_fields(fields: Mapping[str, Any]) -> None:
    """Register the secret fields of a credential (and the password inside connection URLs)."""
    for key, value in fields.items():
        if _CONNECTION_FIELD.search(str(key).lower()) and not is_secret_field(str(key)):
            register_connection_secret(value)
        elif is_secret_field(str(key)):
            if isinstance(value, Mapping):
                register_fields(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    register_secret(item)
            else:
                register_secret(value)


def registered_secrets() -> Iterable[str]:
    """The secrets :func:`redact` masks (for tests and diagnostics; never log them)."""
    with _LOCK:
        return frozenset(_SECRETS)


__all__ = ["ENV_PREFIX", "MASK", "credential_from_env", "env_name", "is_secret_field", "redact",
           "redact_value", "register_connection_secret", "register_fields", "register_secret",
           "registered_secrets", "secret_forms", "secret_safe"]
