"""``{{ keychain.<name>.<field> }}``: a playbook's ``keychain:`` entries, resolved on first use.

NoETL declares secrets a playbook needs in a root ``keychain:`` list and its worker resolves
them lazily. Here every entry resolves through the ``noetl_credentials`` resource
(:class:`~noetl_dagster.resources.credentials.CredentialsResource`: configuration, ``EnvVar``,
``NOETL_CREDENTIAL_<ALIAS>`` environment variables):

* ``kind: credential`` with ``credential: <alias>`` (a template over the workload) reads that
  credential's fields;
* any other entry (``secret_manager``/``secrets`` with ``provider: gcp|aws|...``, ``oauth2``,
  ``google_id_token``) reads the credential named like the entry: the deployment supplies the
  values the secret manager would have returned, e.g. ``NOETL_CREDENTIAL_OPENAI_TOKEN__API_KEY``.
  When the entry has a ``map:``, exactly the mapped fields are exposed and each must be present.

An entry the playbook does not declare, or one no credential defines, fails the step with a
message naming it (NoETL renders such references empty unless ``NOETL_KEYCHAIN_STRICT``; an
empty token only fails later, with a 401). Secret fields and every mapped field are registered
for redaction.

Example::

    keychain:
      - {name: warehouse, kind: credential, credential: "{{ workload.pg_auth }}"}
      - {name: openai_token, kind: secret_manager, provider: gcp, map: {api_key: projects/p/secrets/k}}
    ...
        headers: {Authorization: "Bearer {{ keychain.openai_token.api_key }}"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

from noetl_dagster.core.secrets import env_name, register_secret
from noetl_dagster.core.templates import ReadOnlyMap, TemplateFailure, Unserialisable, render_value
from noetl_dagster.runtime.tools.base import ToolError


class KeychainError(ToolError):
    """A ``keychain.<name>`` reference that cannot be resolved."""


class Keychain(Unserialisable, Mapping):
    """The ``keychain`` template name of one op: entries by name, each resolved once.

    Templates index it (``keychain.<name>.<field>``) but cannot list or dump it: iterating it
    (``{{ keychain | tojson }}``, ``{{ keychain }}``, ``{% for k in keychain %}``) fails the step,
    so one template cannot resolve and print every entry.
    """

    refusal = ("the keychain cannot be listed or serialised as a whole; "
               "use `keychain.<name>.<field>`")

    def __init__(self, entries: list[Any], credentials: Any, workload: Mapping[str, Any]) -> None:
        self._entries = {entry.name: entry for entry in entries}
        self._credentials = credentials
        self._workload = workload
        self._resolved: dict[str, ReadOnlyMap] = {}

    def __getitem__(self, name: Any) -> ReadOnlyMap:
        if name not in self._resolved:
            self._resolved[name] = ReadOnlyMap(self._resolve(name))
        return self._resolved[name]

    def __contains__(self, name: object) -> bool:  # declared, without resolving it
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        raise TemplateFailure(self.refusal)

    def names(self) -> list[str]:
        """The declared entry names (for diagnostics; never their values)."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _resolve(self, name: str) -> dict[str, Any]:
        entry = self._entries.get(name)
        if entry is None:
            declared = ", ".join(sorted(self._entries)) or "none"
            raise KeychainError(f"keychain entry {name!r} is not declared in the playbook's `keychain:` "
                                f"(declared: {declared}); add `- {{name: {name}, kind: credential, "
                                f"credential: <alias>}}`")
        alias = entry.name
        if entry.credential:
            alias = render_value(entry.credential, {**self._workload, "workload": ReadOnlyMap(self._workload)})
            if not isinstance(alias, str) or not alias.strip():
                raise KeychainError(f"keychain entry {name!r}: `credential:` rendered to {alias!r}, not a "
                                    "credential alias; pass the alias in the workload")
            alias = alias.strip()
        if self._credentials is None:
            raise KeychainError(f"keychain entry {name!r} needs credential {alias!r}, but no "
                                "`noetl_credentials` resource is configured")
        try:
            fields = self._credentials.resolve(alias)
        except ToolError as exc:
            raise KeychainError(f"keychain entry {name!r}: {exc}") from None
        if entry.map:
            missing = sorted(k for k in entry.map if fields.get(k) in (None, ""))
            if missing:
                raise KeychainError(f"keychain entry {name!r}: credential {alias!r} has no "
                                    f"{', '.join(missing)} (the fields its `map:` names); add them to "
                                    f"the credential, e.g. {env_name(alias)}__{missing[0].upper()}")
            fields = {k: fields[k] for k in entry.map}
            for value in fields.values():  # mapped fields are secrets whatever their names
                register_secret(value)
        return fields
