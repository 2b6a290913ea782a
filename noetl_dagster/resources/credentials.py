"""Credentials for ``auth: <alias>``: the ``noetl_credentials`` Dagster resource.

A step's tool names a credential by alias (``auth: pg_main``, ``auth: {type: bearer,
credential: api_token}``); ops resolve it through the ``noetl_credentials`` resource, a
:class:`CredentialsResource`. Every secret it resolves is registered with
:mod:`noetl_dagster.core.secrets`, whose :func:`~noetl_dagster.core.secrets.redact` masks it in
any text before it is shown.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from noetl_dagster.core.secrets import credential_from_env, env_name, register_fields, redact
from noetl_dagster.errors import CredentialNotFound


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
            env_fields = credential_from_env(alias)
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
        register_fields(fields)
        return fields

    def has(self, alias: str) -> bool:
        """Whether ``alias`` is defined (without resolving environment variables in config)."""
        return alias in self.credentials or (self.use_env and credential_from_env(alias) is not None)

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


__all__ = ["CredentialNotFound", "CredentialsResource"]
