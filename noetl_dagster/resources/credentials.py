"""Credentials for ``auth: <alias>``: a Dagster resource, plus redaction of resolved secrets.

A step's tool names a credential by alias (``auth: pg_main``, ``auth: {type: bearer,
credential: api_token}``); ops resolve it through the ``noetl_credentials`` resource, a
:class:`CredentialsResource`. Secret values must never reach results, events or error messages:
every secret resolved in this process is remembered so that :func:`redact` can mask it in any
text (error messages, logs) before it is shown.
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

import dagster as dg
from pydantic import Field

from ..runtime.tools.base import ToolError

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


class CredentialNotFound(ToolError):
    """An ``auth:`` alias that no configuration or environment variable defines."""


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


def _how_to_configure(alias: str) -> str:
    var = env_name(alias)
    return (f"define it in the `noetl_credentials` resource (CredentialsResource(credentials="
            f"{{{alias!r}: {{...}}}})), or set {var}='{{\"password\": ...}}' (JSON) or "
            f"{var}__<FIELD>=<value> (e.g. {var}__PASSWORD) in the environment")


class CredentialsResource(dg.ConfigurableResource):
    """Resolves ``auth: <alias>`` credentials for tools, from configuration and environment.

    Sources, merged field by field (a later source wins):

    1. ``NOETL_CREDENTIAL_<ALIAS>``: a JSON object of fields
       (``NOETL_CREDENTIAL_PG_MAIN='{"db_host": "db", "db_password": "..."}'``);
    2. ``NOETL_CREDENTIAL_<ALIAS>__<FIELD>``: one field each, the field lower-cased
       (``NOETL_CREDENTIAL_PG_MAIN__DB_PASSWORD=...``); the double underscore keeps
       ``pg`` and ``pg_main`` apart;
    3. ``credentials[alias]`` of this resource; give secrets as ``dagster.EnvVar`` so that
       they are read at run time and never stored in run config.

    ``<ALIAS>`` is the alias upper-cased with non-alphanumerics as ``_`` (``pg-main`` ->
    ``PG_MAIN``). ``use_env: false`` turns the environment off. Field names follow NoETL's
    credential types: ``postgres`` (``db_host db_port db_user db_password db_name``, or
    ``host port user password database``, or ``connection_string``), ``bearer`` (``token``),
    ``basic`` (``username password``), ``api_key`` (``api_key``, optional ``header``); an
    optional ``type`` field names the type.

    Example::

        import dagster as dg
        from noetl_dagster.resources.credentials import CredentialsResource

        creds = CredentialsResource(credentials={
            "pg_main": {"type": "postgres", "db_host": "127.0.0.1", "db_port": "5432",
                        "db_user": "etl", "db_name": "warehouse",
                        "db_password": dg.EnvVar("PG_MAIN_PASSWORD")},
            "api_token": {"type": "bearer", "token": dg.EnvVar("API_TOKEN")},
        })
        creds.resolve("pg_main")["db_user"]   # 'etl'
        # in a job: resources={"noetl_credentials": creds}

    :meth:`resolve` raises :class:`CredentialNotFound` (a ``ToolError``) naming the alias and
    how to define it. Every secret field it returns is registered for :func:`redact`.
    """

    credentials: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="alias -> {field: value}; give secret values as dagster.EnvVar",
    )
    use_env: bool = Field(
        default=True,
        description="also read NOETL_CREDENTIAL_<ALIAS> (JSON) and NOETL_CREDENTIAL_<ALIAS>__<FIELD>",
    )

    def resolve(self, alias: str) -> dict[str, Any]:
        """The fields of credential ``alias``; raises :class:`CredentialNotFound` when unknown."""
        if not isinstance(alias, str) or not alias.strip():
            raise CredentialNotFound(f"credential alias must be a non-empty string, got {alias!r}")
        alias = alias.strip()
        fields: dict[str, Any] = {}
        found = False
        if self.use_env:
            env_fields = _from_env(alias)
            if env_fields is not None:
                fields.update(env_fields)
                found = True
        configured = self.credentials.get(alias)
        if configured is not None:
            found = True
            for key, value in configured.items():
                fields[key] = _config_value(alias, key, value)
        if not found:
            raise CredentialNotFound(f"credential {alias!r} is not defined: {_how_to_configure(alias)}")
        _register_fields(fields)
        return fields

    def has(self, alias: str) -> bool:
        """Whether ``alias`` is defined (without resolving environment variables in config)."""
        return alias in self.credentials or (self.use_env and _from_env(alias) is not None)

    def redact(self, text: Any) -> str:
        """Same as the module's :func:`redact`."""
        return redact(text)


def _config_value(alias: str, key: str, value: Any) -> Any:
    if isinstance(value, dg.EnvVar):
        resolved = value.get_value()
        if resolved is None:
            raise CredentialNotFound(
                f"credential {alias!r}: field {key!r} reads environment variable "
                f"{value.env_var_name}, which is not set")
        return resolved
    return value


def _from_env(alias: str) -> dict[str, Any] | None:
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


def _register_fields(fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if _CONNECTION_FIELD.search(str(key).lower()) and not is_secret_field(str(key)):
            register_connection_secret(value)
        elif is_secret_field(str(key)):
            if isinstance(value, Mapping):
                _register_fields(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    register_secret(item)
            else:
                register_secret(value)


def registered_secrets() -> Iterable[str]:
    """The secrets :func:`redact` masks (for tests and diagnostics; never log them)."""
    with _LOCK:
        return frozenset(_SECRETS)


__all__ = ["CredentialNotFound", "CredentialsResource", "ENV_PREFIX", "MASK", "env_name",
           "is_secret_field", "redact", "redact_value", "register_connection_secret",
           "register_secret", "secret_forms", "secret_safe"]
