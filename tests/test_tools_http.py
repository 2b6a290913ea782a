"""``kind: http`` against a real HTTP server on loopback (ThreadingHTTPServer in a thread)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest

from noetl_dagster import run_playbook
from noetl_dagster.playbook.loader import PlaybookError, parse_text
from noetl_dagster.errors import CredentialNotFound
from noetl_dagster.resources.credentials import CredentialsResource
from noetl_dagster.playbook.kinds import check_tool_config
from noetl_dagster.runtime.tools import ErrorResult, ToolContext, ToolError, get_tool

TOKEN = "bearer-Secret-T0ken-123"
API_KEY = "apikey-Secret-456789"
BASIC_PASSWORD = "basic-Secret-pw-42"


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

    def _json(self, status: int, data: object, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _route(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if url.path == "/json":
            self._json(200, {"ok": True, "items": [1, 2, 3]})
        elif url.path == "/echo":
            self._json(200, {"method": self.command, "query": parse_qs(url.query),
                             "headers": dict(self.headers.items()), "body": body},
                       headers={"X-Echo-Auth": self.headers.get("Authorization", "")})
        elif url.path == "/text":
            self._send(200, b"plain text", "text/plain")
        elif url.path == "/notjson":
            self._send(200, b"<html>oops</html>", "application/json")
        elif url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["2"])[0]))
            self._json(200, {"slow": True})
        elif url.path.startswith("/status/"):
            self._json(int(url.path.rsplit("/", 1)[1]), {"error": "as requested"})
        elif url.path == "/redirect":
            self._send(302, b"", "text/plain", headers={"Location": "/json"})
        elif url.path == "/binary":
            self._send(200, bytes(range(8)), "application/octet-stream")
        elif url.path == "/protected":
            got = self.headers.get("Authorization", "")
            if got == f"Bearer {TOKEN}":
                self._json(200, {"hello": "authorized"})
            else:
                # a server that echoes what it got: must not leak into results
                self._json(401, {"error": "bad token", "received": got})
        else:
            self._json(404, {"error": "not found"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _route  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    # The timeout tests make the server write to a closed socket. Python ignores SIGPIPE, but
    # `noetl_dagster.cli.main()` (called in process by other tests) restores its default,
    # which would kill this whole process: put Python's default (ignore) back, and keep it
    # (a handler thread may still write after this fixture ends).
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


CREDS = CredentialsResource(use_env=False, credentials={
    "api_token": {"type": "bearer", "token": TOKEN},
    "plain_token": {"token": TOKEN},
    "svc_basic": {"type": "basic", "username": "svc", "password": BASIC_PASSWORD},
    "svc_key": {"type": "api_key", "api_key": API_KEY, "header": "X-Service-Key"},
})


def run(config: dict, scope: dict | None = None) -> dict:
    ctx = ToolContext("call", "exec-1", scope or {}, resources={"credentials": CREDS})
    return get_tool("http").run(config, ctx)


def no_secret(value: object, *secrets: str) -> str:
    if isinstance(value, BaseException):
        assert value.__cause__ is None and value.__context__ is None
        text = "".join(traceback.format_exception_only(value)) + repr(value)
    else:
        text = json.dumps(value, default=str)
    for secret in secrets:
        assert secret not in text
        assert base64.b64encode(f"svc:{secret}".encode()).decode() not in text
    return text


# ------------------------------------------------------------------------------------ requests
def test_get_json(server: str) -> None:
    out = run({"url": "{{ base }}/json", "method": "GET"}, {"base": server})
    assert out["status_code"] == 200
    assert out["data"] == out["body"] == {"ok": True, "items": [1, 2, 3]}
    assert out["headers"]["content-type"] == "application/json"


def test_params_headers_and_json_body(server: str) -> None:
    out = run({"url": f"{server}/echo", "method": "post", "params": {"page": 2, "flag": True, "skip": None, "tag": ["a", "b"]},
               "headers": {"X-Trace": "{{ execution_id }}", "X-Num": 7}, "json": {"a": [1, 2]}},
              {"execution_id": "exec-1"})
    data = out["data"]
    assert data["method"] == "POST"
    assert data["query"] == {"page": ["2"], "flag": ["true"], "tag": ["a", "b"]}
    assert data["headers"]["X-Trace"] == "exec-1" and data["headers"]["X-Num"] == "7"
    assert json.loads(data["body"]) == {"a": [1, 2]}
    assert data["headers"]["Content-Type"] == "application/json"


def test_form_and_text_body(server: str) -> None:
    form = run({"url": f"{server}/echo", "method": "POST", "form": {"a": 1, "b": "x y"}})["data"]
    assert form["body"] == "a=1&b=x+y"
    assert form["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    text = run({"url": f"{server}/echo", "method": "PUT", "body": "raw text"})["data"]
    assert text["body"] == "raw text" and text["method"] == "PUT"


def error_result(config: dict) -> tuple[dict, str]:
    """A non-2xx answer is NoETL's error result: the step completes with status `error`."""
    out = run(config)
    assert isinstance(out, ErrorResult), out
    return out.data, out.message


def test_non_2xx_completes_the_step(server: str) -> None:
    out, message = error_result({"url": f"{server}/status/404"})
    assert out["status_code"] == 404 and out["data"] == {"error": "as requested"}
    assert message == f"HTTP 404 response from GET {server}/status/404"
    assert error_result({"url": f"{server}/status/503"})[0]["status_code"] == 503


def test_response_types(server: str) -> None:
    assert run({"url": f"{server}/text"})["data"] == "plain text"
    assert run({"url": f"{server}/json", "response_type": "text"})["data"].startswith('{"ok": true')
    assert run({"url": f"{server}/binary", "response_type": "binary"})["data"] == base64.b64encode(bytes(range(8))).decode()
    # without an explicit response_type a broken JSON body is kept as text
    assert run({"url": f"{server}/notjson"})["data"] == "<html>oops</html>"


def test_follow_redirects(server: str) -> None:
    assert run({"url": f"{server}/redirect"})["data"]["ok"] is True
    out, _ = error_result({"url": f"{server}/redirect", "follow_redirects": False})
    assert out["status_code"] == 302 and out["headers"]["location"] == "/json"


# ------------------------------------------------------------------------------------ failures
def test_timeout_fails(server: str) -> None:
    with pytest.raises(ToolError, match=r"GET .*/slow\?s=2 timed out after 0\.3s"):
        run({"url": f"{server}/slow?s=2", "timeout_seconds": 0.3})


def test_connection_refused_fails() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolError, match=rf"GET http://127.0.0.1:{port}/x failed: ConnectError"):
        run({"url": f"http://127.0.0.1:{port}/x"})


def test_non_json_body_with_response_type_json(server: str) -> None:
    with pytest.raises(ToolError) as info:
        run({"url": f"{server}/notjson", "response_type": "json"})
    message = str(info.value)
    assert "answered 200 with a body that is not JSON" in message
    assert "'<html>oops</html>'" in message and "response_type: text" in message


def test_unknown_credential_alias(server: str) -> None:
    with pytest.raises(CredentialNotFound, match=r"credential 'missing_alias' is not defined"):
        run({"url": f"{server}/json", "auth": "missing_alias"})
    with pytest.raises(CredentialNotFound, match=r"credential 'missing_alias' is not defined"):
        run({"url": f"{server}/json", "auth": {"type": "bearer", "credential": "missing_alias"}})


def test_unsupported_auth_type(server: str) -> None:
    with pytest.raises(ToolError, match="auth type 'gcp_adc' .* not supported"):
        run({"url": f"{server}/json", "auth": {"type": "gcp_adc"}})
    assert check_tool_config("http", {"url": "x", "auth": {"type": "kerberos"}})[0][0] == "auth.type"


# ---------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize("auth", ["api_token", "plain_token", {"type": "bearer", "credential": "api_token"}])
def test_bearer_auth(server: str, auth: object) -> None:
    out = run({"url": f"{server}/protected", "auth": auth})
    assert out["status_code"] == 200 and out["data"] == {"hello": "authorized"}


def test_bearer_token_never_returned(server: str) -> None:
    out = run({"url": f"{server}/echo", "auth": "api_token"})
    assert out["data"]["headers"]["Authorization"] == "***"  # the server echoed it
    assert out["headers"]["x-echo-auth"] == "***"
    no_secret(out, TOKEN)


def test_failing_request_with_bearer_token(server: str) -> None:
    # a 401 completes the step; what the server echoes is masked
    out, message = error_result({"url": f"{server}/protected", "auth": {"type": "bearer", "token": "wrong-T0ken-xyz"}})
    assert out["status_code"] == 401 and out["data"]["received"] == "***"
    no_secret(out, "wrong-T0ken-xyz")
    no_secret(message, "wrong-T0ken-xyz")
    # a failure: the token in the URL's query string is masked in the message
    with pytest.raises(ToolError) as info:
        run({"url": f"{server}/slow?s=2&token={TOKEN}", "auth": "api_token", "timeout_seconds": 0.3})
    message = no_secret(info.value, TOKEN)
    assert "timed out" in message and "token=***" in message
    with pytest.raises(ToolError) as info:
        run({"url": f"{server}/notjson?key={TOKEN}", "auth": "api_token", "response_type": "json"})
    no_secret(info.value, TOKEN)


def test_basic_auth(server: str) -> None:
    out = run({"url": f"{server}/echo", "auth": "svc_basic"})
    assert out["data"]["headers"]["Authorization"] == "***"
    no_secret(out, BASIC_PASSWORD)
    direct = run({"url": f"{server}/echo", "auth": {"type": "basic", "username": "u1", "password": "direct-Pw-1"}})
    assert direct["data"]["headers"]["Authorization"] == "***"


def test_api_key_header_and_param(server: str) -> None:
    out = run({"url": f"{server}/echo", "auth": "svc_key"})
    assert out["data"]["headers"]["X-Service-Key"] == "***"
    no_secret(out, API_KEY)
    out = run({"url": f"{server}/echo", "auth": {"type": "api_key", "credential": "svc_key", "header": "X-Other"}})
    assert out["data"]["headers"]["X-Other"] == "***"
    out = run({"url": f"{server}/echo", "auth": {"type": "api_key", "credential": "svc_key", "param": "key"}})
    assert out["data"]["query"] == {"key": ["***"]}
    no_secret(out, API_KEY)


def test_sensitive_headers_from_the_playbook_are_masked(server: str) -> None:
    out = run({"url": f"{server}/echo", "headers": {"Authorization": "Bearer inline-T0ken-777", "X-Plain": "ok"}})
    assert out["data"]["headers"]["Authorization"] == "***"
    assert out["data"]["headers"]["X-Plain"] == "ok"
    no_secret(out, "inline-T0ken-777")


# ----------------------------------------------------------------------------------- playbooks
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: http_e2e, path: tests/http_e2e}
workload: {base_url: ""}
workflow:
  - step: start
    tool: {kind: noop}
    next: fetch
  - step: fetch
    tool:
      kind: http
      url: "{{ workload.base_url }}/PATH"
      AUTH
    next:
      spec: {mode: exclusive}
      arcs:
        - step: ok
          when: "{{ output.status_code == 200 }}"
        - step: refused
  - step: ok
    tool: {kind: python, input: {d: "{{ fetch.data }}"}, code: "result = d"}
  - step: refused
    tool: {kind: python, input: {code: "{{ fetch.status_code }}"}, code: "result = {'status': code}"}
"""


def test_playbook_routes_on_status_code(server: str) -> None:
    text = PLAYBOOK.replace("PATH", "protected").replace("AUTH", "headers: {X-Nothing: '1'}")
    report = run_playbook(parse_text(text), {"base_url": server}, instance=dg.DagsterInstance.ephemeral())
    assert report.status == "success"
    assert report.steps["refused"].result == {"status": 401}
    assert report.steps["ok"].status == "skipped"


def test_playbook_timeout_fails_the_step(server: str) -> None:
    text = PLAYBOOK.replace("PATH", "slow?s=2").replace("AUTH", "timeout_seconds: 0.3")
    report = run_playbook(parse_text(text), {"base_url": server}, instance=dg.DagsterInstance.ephemeral())
    assert report.status == "failure"
    assert report.steps["fetch"].status == "failed" and "timed out after 0.3s" in report.steps["fetch"].error


def test_playbook_with_auth_alias(server: str) -> None:
    text = PLAYBOOK.replace("PATH", "protected").replace("AUTH", "auth: api_token")
    report = run_playbook(parse_text(text), {"base_url": server}, instance=dg.DagsterInstance.ephemeral(),
                          resources={"noetl_credentials": CREDS})
    assert report.status == "success"
    assert report.steps["ok"].result == {"hello": "authorized"}


# ------------------------------------------------------------------------------------ keychain
KEYCHAIN_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: keychain_e2e, path: tests/keychain_e2e}
workload: {base_url: "", svc_auth: api_token}
keychain:
  - {name: vendor, kind: secret_manager, provider: gcp, scope: global, map: {token: projects/p/secrets/vendor}}
  - {name: svc, kind: credential, credential: "{{ workload.svc_auth }}"}
workflow:
  - step: start
    tool:
      kind: http
      url: "{{ workload.base_url }}/protected"
      headers: {Authorization: "Bearer {{ keychain.vendor.token }}"}
    next: second
  - step: second
    tool:
      kind: http
      url: "{{ workload.base_url }}/protected"
      headers: {Authorization: "Bearer {{ keychain.ENTRY.token }}"}
"""


def run_keychain(server: str, creds: CredentialsResource, entry: str = "svc", **workload: str):
    text = KEYCHAIN_PLAYBOOK.replace("ENTRY", entry)
    return run_playbook(parse_text(text), {"base_url": server, **workload},
                        instance=dg.DagsterInstance.ephemeral(), resources={"noetl_credentials": creds})


def test_keychain_entries_resolve_from_configured_credentials(server: str) -> None:
    creds = CredentialsResource(use_env=False, credentials={"vendor": {"token": TOKEN}, "api_token": {"token": TOKEN}})
    report = run_keychain(server, creds)
    assert report.status == "success", {k: s.error for k, s in report.steps.items()}
    assert report.steps["start"].result["data"] == {"hello": "authorized"}  # the mapped secret-manager entry
    assert report.steps["second"].result["data"] == {"hello": "authorized"}  # `credential:` from the workload
    no_secret({k: s.result for k, s in report.steps.items()}, TOKEN)


def test_keychain_entry_from_environment(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_CREDENTIAL_VENDOR__TOKEN", TOKEN)
    monkeypatch.setenv("NOETL_CREDENTIAL_SVC_TOKEN", json.dumps({"token": TOKEN}))
    report = run_keychain(server, CredentialsResource(), svc_auth="svc-token")
    assert report.status == "success", {k: s.error for k, s in report.steps.items()}
    assert report.steps["second"].result["status_code"] == 200


def test_undeclared_keychain_entry_fails_naming_it(server: str) -> None:
    creds = CredentialsResource(use_env=False, credentials={"vendor": {"token": TOKEN}})
    report = run_keychain(server, creds, entry="nope")
    assert report.status == "failure"
    error = report.steps["second"].error
    assert "keychain entry 'nope' is not declared" in error and "declared: svc, vendor" in error
    no_secret(error, TOKEN)


def test_keychain_entry_without_credential_or_mapped_field(server: str) -> None:
    creds = CredentialsResource(use_env=False, credentials={"vendor": {"api_key": API_KEY}})
    report = run_keychain(server, creds)
    assert report.status == "failure"
    error = report.steps["start"].error
    assert "keychain entry 'vendor': credential 'vendor' has no token" in error
    assert "NOETL_CREDENTIAL_VENDOR__TOKEN" in error
    no_secret(error, API_KEY)
    report = run_keychain(server, CredentialsResource(use_env=False, credentials={"vendor": {"token": TOKEN}}),
                          svc_auth="missing_alias")
    error = report.steps["second"].error
    assert report.status == "failure" and "keychain entry 'svc': credential 'missing_alias' is not defined" in error


def test_duplicate_keychain_entries_are_a_load_error() -> None:
    text = KEYCHAIN_PLAYBOOK.replace("ENTRY", "svc").replace("name: svc,", "name: vendor,")
    with pytest.raises(PlaybookError) as info:
        parse_text(text, "dup.yaml")
    assert "dup.yaml:8:6: keychain.name: keychain entry 'vendor' is declared twice" in str(info.value)
