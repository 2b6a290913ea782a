"""CredentialsResource: aliases from config (with EnvVar) and the environment; redaction."""

from __future__ import annotations

import dagster as dg
import pytest

from noetl_dagster.errors import CredentialNotFound

from noetl_dagster.resources.credentials import CredentialsResource

from noetl_dagster.core.secrets import env_name, is_secret_field, redact, redact_value, register_secret
from noetl_dagster.runtime.tools import ToolContext, ToolError


def test_resolves_configured_alias() -> None:
    creds = CredentialsResource(credentials={"pg_main": {"db_host": "db", "db_password": "cfg-Pa55word"}})
    assert creds.resolve("pg_main") == {"db_host": "db", "db_password": "cfg-Pa55word"}
    # a copy: callers cannot change the configuration
    creds.resolve("pg_main")["db_host"] = "other"
    assert creds.resolve("pg_main")["db_host"] == "db"


def test_env_var_in_config_is_read_at_resolve_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_TOKEN_VALUE", "envvar-T0ken-123")
    creds = CredentialsResource(credentials={"api": {"token": dg.EnvVar("TEST_API_TOKEN_VALUE")}})
    assert creds.resolve("api") == {"token": "envvar-T0ken-123"}
    assert redact("got envvar-T0ken-123") == "got ***"


def test_env_var_in_config_unset_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_VAR_XYZ", raising=False)
    creds = CredentialsResource(credentials={"api": {"token": dg.EnvVar("TEST_UNSET_VAR_XYZ")}})
    with pytest.raises(CredentialNotFound, match=r"'api'.*'token'.*TEST_UNSET_VAR_XYZ.*not set"):
        creds.resolve("api")


def test_env_var_inside_a_dagster_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a job resource, Dagster resolves nested EnvVar values itself."""
    monkeypatch.setenv("TEST_JOB_DB_PASSWORD", "job-Pa55word-9")
    seen = {}

    @dg.op(required_resource_keys={"noetl_credentials"})
    def use(context):  # noqa: ANN001 - dagster reads the annotation, `from __future__` hides it
        seen.update(context.resources.noetl_credentials.resolve("pg"))

    @dg.job(resource_defs={"noetl_credentials": CredentialsResource(
        credentials={"pg": {"db_user": "etl", "db_password": dg.EnvVar("TEST_JOB_DB_PASSWORD")}})})
    def job() -> None:
        use()

    assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral()).success
    assert seen == {"db_user": "etl", "db_password": "job-Pa55word-9"}


def test_env_json_and_field_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_PG_MAIN", '{"db_host": "h1", "db_port": 5433, "db_password": "json-Pa55"}')
    monkeypatch.setenv("NOETL_CREDENTIAL_PG_MAIN__DB_PASSWORD", "field-Pa55word")
    monkeypatch.setenv("NOETL_CREDENTIAL_PG__DB_HOST", "not-this-one")  # alias `pg`, not `pg-main`
    creds = CredentialsResource()
    assert creds.resolve("pg-main") == {"db_host": "h1", "db_port": 5433, "db_password": "field-Pa55word"}
    assert creds.resolve("pg") == {"db_host": "not-this-one"}


def test_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_SVC__TOKEN", "env-token-value")
    monkeypatch.setenv("NOETL_CREDENTIAL_SVC__USER", "env-user")
    creds = CredentialsResource(credentials={"svc": {"token": "cfg-token-value"}})
    assert creds.resolve("svc") == {"token": "cfg-token-value", "user": "env-user"}
    assert CredentialsResource(use_env=False, credentials={"svc": {"token": "x1234"}}).resolve("svc") == {"token": "x1234"}


def test_env_plain_value_is_a_value_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_RAW_TOKEN", "plain-raw-secret")
    assert CredentialsResource().resolve("raw_token") == {"value": "plain-raw-secret"}
    assert "plain-raw-secret" not in redact("x plain-raw-secret y")


def test_use_env_false_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_ONLY_ENV__TOKEN", "abcd-1234")
    with pytest.raises(CredentialNotFound):
        CredentialsResource(use_env=False).resolve("only_env")


def test_unknown_alias_message_names_alias_and_how_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOETL_CREDENTIAL_MISSING_ALIAS", raising=False)
    creds = CredentialsResource(credentials={"other": {"password": "other-Secret-1"}})
    with pytest.raises(CredentialNotFound) as info:
        creds.resolve("missing-alias")
    message = str(info.value)
    assert "credential 'missing-alias' is not defined" in message
    assert "noetl_credentials" in message
    assert "NOETL_CREDENTIAL_MISSING_ALIAS" in message and "NOETL_CREDENTIAL_MISSING_ALIAS__PASSWORD" in message
    assert "other-Secret-1" not in message
    assert isinstance(info.value, ToolError)  # tools let it fail the step as is


def test_tool_context_credential_uses_the_resource() -> None:
    ctx = ToolContext("s", "e1", {}, resources={"credentials": CredentialsResource(credentials={"a": {"token": "tok-4567"}})})
    assert ctx.credential("a") == {"token": "tok-4567"}
    with pytest.raises(ToolError, match="'b'"):
        ctx.credential("b")
    with pytest.raises(ToolError, match="no credentials resource"):
        ToolContext("s", "e1", {}).credential("a")


def test_redact_masks_secret_fields_only() -> None:
    creds = CredentialsResource(credentials={"db": {
        "db_host": "db.internal", "db_user": "etl_user", "db_password": "p@ss w0rd/Long",
        "connection_string": "postgresql://etl_user:conn-Str-Pw9@db.internal:5432/wh",
        "token_type": "Bearer"}})
    creds.resolve("db")
    text = ("login etl_user@db.internal with p@ss w0rd/Long or p%40ss%20w0rd%2FLong; "
            "url postgresql://etl_user:conn-Str-Pw9@db.internal:5432/wh type Bearer")
    out = redact(text)
    assert "p@ss w0rd/Long" not in out and "p%40ss%20w0rd%2FLong" not in out
    assert "conn-Str-Pw9" not in out
    assert "etl_user@db.internal" in out and "Bearer" in out
    assert creds.redact(text) == out
    assert redact_value({"a": ["x p@ss w0rd/Long"], "n": 1}) == {"a": ["x ***"], "n": 1}


def test_short_values_are_not_redacted() -> None:
    register_secret("ab")
    assert redact("a tab b") == "a tab b"


@pytest.mark.parametrize("name, secret", [
    ("password", True), ("db_password", True), ("token", True), ("api_key", True),
    ("client_secret", True), ("value", True), ("token_type", False), ("api_key_header", False),
    ("db_user", False), ("db_host", False), ("header", False), ("type", False),
])
def test_secret_field_names(name: str, secret: bool) -> None:
    assert is_secret_field(name) is secret


def test_env_name() -> None:
    assert env_name("pg-main.prod") == "NOETL_CREDENTIAL_PG_MAIN_PROD"
