"""``kind: http``: one HTTP request with httpx, NoETL's contract.

Config (rendered as templates)::

    tool:
      kind: http
      method: POST                        # GET (default), POST, PUT, PATCH, DELETE, HEAD, OPTIONS
      url: "{{ workload.base_url }}/items"   # alias `endpoint`
      headers: {X-Trace: "{{ execution_id }}"}
      params: {page: 1, tag: [a, b]}      # query string; scalars as text, nulls dropped
      json: {...}                         # or `form: {...}` or `body:` (text; a mapping is JSON)
      timeout_seconds: 30                 # alias `timeout`; default 30
      follow_redirects: true
      verify_ssl: true
      response_type: json                 # json | text | binary (base64); default: by content-type
      auth: api_token                     # a credential alias, or:
      # auth: {type: bearer|basic|api_key, credential: <alias>, header: X-API-Key}

Result ``{status_code, headers, data, body}``: ``data`` (and ``body``, the same value) is the
parsed JSON, the text, or base64 for ``binary``. A non-2xx status is NoETL's *error result*: the
step completes with status ``error`` and that result, so arcs can route on
``output.status_code`` (inside a pipeline, rules see ``output.status == 'error'``); a transport
error or a timeout fails it, and so does a body that is not JSON when ``response_type: json``
is explicit.

**Auth.** ``auth: <alias>`` resolves the credential through ``ctx.credential`` and picks the
scheme from its ``type`` field (``bearer``/``bearer_token``, ``basic``, ``api_key``) or from its
fields (``token`` -> bearer, ``username`` + ``password`` -> basic, ``api_key`` -> api key).
The mapping form names the type; ``credential`` is the alias, or ``token``/``username``/
``password``/``key`` give values directly. ``api_key`` goes in header ``header`` (default
``X-API-Key``) or, with ``param: <name>``, in the query string.

**Secrets.** The request's secrets (credential values, and values of headers such as
``Authorization``, ``Cookie``, ``X-API-Key``) are masked as ``***`` in everything the tool
returns (a server that echoes the request cannot leak them into results) and in error
messages; they are also registered for
:func:`noetl_dagster.core.secrets.redact`.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Mapping

from noetl_dagster.core.secrets import secret_safe
from noetl_dagster.playbook.kinds import HTTP_AUTH_TYPES as _TYPES
from noetl_dagster.runtime.tools.base import ErrorResult, Tool, ToolContext, ToolError
from noetl_dagster.core import secrets as creds

DEFAULT_TIMEOUT = 30.0
DEFAULT_API_KEY_HEADER = "X-API-Key"
_SENSITIVE_HEADER = re.compile(
    r"^(authorization|proxy-authorization|cookie|set-cookie)$|token|secret|api-?key|apikey|password"
    r"|auth", re.IGNORECASE)
_TOKEN_FIELDS = ("token", "bearer_token", "access_token", "api_token", "value", "secret")
_USER_FIELDS = ("username", "user", "login", "client_id")
_PASSWORD_FIELDS = ("password", "passwd", "secret", "client_secret")
_KEY_FIELDS = ("api_key", "key", "apikey", "token", "value", "secret")


class _Auth:
    """What ``auth:`` adds to a request, and the secrets to mask."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self.basic: tuple[str, str] | None = None
        self.secrets: set[str] = set()


def _first(fields: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = fields.get(name)
        if value is not None and value != "":
            return value
    return None


def resolve_auth(auth: Any, ctx: ToolContext) -> _Auth:
    """Turn ``auth:`` (alias or mapping) into headers/params/basic auth for one request."""
    result = _Auth()
    if auth is None or auth == "" or auth == {}:
        return result
    alias: str | None
    if isinstance(auth, str):
        alias, spec = auth.strip(), {}
    elif isinstance(auth, Mapping):
        spec = dict(auth)
        alias = spec.get("credential") or spec.get("alias") or None
        if alias is not None and not isinstance(alias, str):
            raise ToolError("http: `auth.credential` must be a credential alias (a string)")
    else:
        raise ToolError(f"http: `auth` must be a credential alias or a mapping, got {type(auth).__name__}")
    fields: dict[str, Any] = {}
    if alias:
        resolved = ctx.credential(alias)
        if not isinstance(resolved, Mapping):
            raise ToolError(f"http: credential {alias!r} must resolve to a mapping of fields")
        fields.update(resolved)
    # values given directly in `auth:` (templates, keychain) complete the credential's
    for key in ("token", "username", "password", "key", "api_key", "value", "header", "param"):
        if spec.get(key) not in (None, ""):
            fields[key] = spec[key]
    who = f"credential {alias!r}" if alias else "`auth`"

    raw_type = spec.get("type") or fields.get("type") or fields.get("auth_type")
    if raw_type:
        kind = _TYPES.get(str(raw_type).lower())
        if kind is None:
            raise ToolError(f"http: auth type {raw_type!r} of {who} is not supported here; "
                            "use bearer, basic or api_key")
    elif _first(fields, ("token", "bearer_token", "access_token")) is not None:
        kind = "bearer"
    elif _first(fields, _USER_FIELDS) is not None and _first(fields, _PASSWORD_FIELDS) is not None:
        kind = "basic"
    elif _first(fields, ("api_key", "apikey", "key")) is not None:
        kind = "api_key"
    elif fields.get("value") is not None:
        kind = "bearer"
    else:
        raise ToolError(f"http: cannot tell how to use {who}: give it a `type` (bearer, basic, "
                        "api_key) or a `token`, `username`+`password` or `api_key` field")

    if kind == "none":
        return result
    if kind == "bearer":
        token = _first(fields, _TOKEN_FIELDS)
        if token is None:
            raise ToolError(f"http: bearer auth with {who} needs a `token` field")
        token = str(token)
        result.headers["Authorization"] = f"Bearer {token}"
        result.secrets.update({token, f"Bearer {token}"})
    elif kind == "basic":
        user, password = _first(fields, _USER_FIELDS), _first(fields, _PASSWORD_FIELDS)
        if user is None or password is None:
            raise ToolError(f"http: basic auth with {who} needs `username` and `password` fields")
        result.basic = (str(user), str(password))
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        result.secrets.update({str(password), encoded, f"Basic {encoded}"})
    else:  # api_key
        key = _first(fields, _KEY_FIELDS)
        if key is None:
            raise ToolError(f"http: api_key auth with {who} needs an `api_key` field")
        key = str(key)
        param = spec.get("param") or spec.get("query_param")
        if param:
            result.params[str(param)] = key
        else:
            header = spec.get("header") or fields.get("header") or DEFAULT_API_KEY_HEADER
            result.headers[str(header)] = key
        result.secrets.add(key)
    return result


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _string_map(value: Any, name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, Mapping):
        raise ToolError(f"http: `{name}` must be a mapping")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, (list, tuple)) and name == "params":
            out[str(key)] = [_as_text(v) for v in item if v is not None]
        else:
            out[str(key)] = _as_text(item)
    return out


class _Scrubber:
    """Masks one request's secrets in returned values and messages."""

    def __init__(self, secrets: set[str]) -> None:
        self._creds = creds
        usable = sorted({s for s in secrets if s and len(s) >= creds.MIN_SECRET_LENGTH},
                        key=len, reverse=True)
        for secret in usable:
            creds.register_secret(secret)
        self._pattern = re.compile("|".join(re.escape(s) for s in usable)) if usable else None

    def text(self, value: str) -> str:
        if self._pattern is not None:
            value = self._pattern.sub(self._creds.MASK, value)
        return value

    def value(self, value: Any) -> Any:
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value

    def message(self, text: str) -> str:
        return self._creds.redact(self.text(text))


class HttpTool(Tool):
    kind = "http"

    @secret_safe
    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        import httpx

        cfg = ctx.render(config)
        url = cfg.get("url") or cfg.get("endpoint")
        if not url:
            raise ToolError("http: `url` rendered empty")
        url = str(url)
        method = str(cfg.get("method") or "GET").upper()
        auth = resolve_auth(cfg.get("auth"), ctx)
        headers = _string_map(cfg.get("headers"), "headers")
        secrets = set(auth.secrets)
        for name, value in headers.items():
            if _SENSITIVE_HEADER.search(name):
                secrets.add(value)
                scheme, _, rest = value.partition(" ")
                if rest and scheme.lower() in ("bearer", "basic", "token", "digest"):
                    secrets.add(rest.strip())
        headers.update(auth.headers)
        params = _string_map(cfg.get("params"), "params")
        params.update(auth.params)
        scrub = _Scrubber(secrets)

        timeout = float(cfg.get("timeout_seconds") or cfg.get("timeout") or DEFAULT_TIMEOUT)
        request: dict[str, Any] = {"headers": headers or None, "params": params or None}
        if auth.basic:
            request["auth"] = httpx.BasicAuth(*auth.basic)
        if cfg.get("json") is not None:
            request["json"] = cfg["json"]
        elif cfg.get("form") is not None:
            request["data"] = _string_map(cfg["form"], "form")
        elif cfg.get("body") is not None or cfg.get("data") is not None:
            body = cfg.get("body", cfg.get("data"))
            if isinstance(body, (dict, list)):
                request["json"] = body
            else:
                request["content"] = body if isinstance(body, bytes) else _as_text(body)
        verify = cfg.get("verify_ssl", cfg.get("verify", True))
        try:
            with httpx.Client(timeout=timeout, follow_redirects=bool(cfg.get("follow_redirects", True)),
                              verify=bool(verify)) as client:
                response = client.request(method, url, **request)
        except httpx.TimeoutException as exc:
            raise ToolError(scrub.message(
                f"http: {method} {url} timed out after {timeout:g}s ({type(exc).__name__}); "
                "raise `timeout_seconds` or check the server")) from None
        except httpx.HTTPError as exc:
            raise ToolError(scrub.message(f"http: {method} {url} failed: {type(exc).__name__}: {exc}")) from None
        except (ValueError, TypeError) as exc:  # a malformed URL or header
            raise ToolError(scrub.message(f"http: {method} {url}: {exc}")) from None

        response_type = cfg.get("response_type")
        content_type = response.headers.get("content-type", "")
        if response_type == "binary":
            data: Any = base64.b64encode(response.content).decode()
        elif response_type == "json" or (response_type in (None, "") and "json" in content_type):
            try:
                data = response.json() if response.content.strip() else None
            except ValueError:
                if response_type == "json":
                    snippet = " ".join(response.text[:120].split())
                    raise ToolError(scrub.message(
                        f"http: {method} {url} answered {response.status_code} with a body that is "
                        f"not JSON (content-type {content_type or 'unset'}, starts {snippet!r}); "
                        "set `response_type: text` to take it as text")) from None
                data = response.text
        elif response_type in (None, "", "text"):
            data = response.text
        else:
            raise ToolError(f"http: response_type must be json, text or binary, not {response_type!r}")
        response_headers = {
            k: ("***" if k.lower() in ("authorization", "proxy-authorization") else v)
            for k, v in response.headers.items()
        }
        data = scrub.value(data)
        result = {
            "status_code": response.status_code,
            "headers": scrub.value(response_headers),
            "data": data,
            "body": data,
        }
        if 200 <= response.status_code < 300:
            return result
        return ErrorResult(result, f"HTTP {response.status_code} response from {method} {scrub.text(url)}")
