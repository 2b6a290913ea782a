"""Tool kinds of the DSL: which exist, which this package runs, and each kind's config checks.

A step's ``tool: {kind: ..., ...}`` is checked here before anything runs: the loader reports
each :class:`Problem` (``field``, ``message``, ``hint``) at the line of that field. The checks
read only the unrendered config (a templated value is left for run time), and import nothing
of the runtime or of Dagster, so ``noetl-dagster validate`` stays cheap.

* :data:`NOETL_KINDS`: every kind NoETL knows; :data:`RUN_KINDS`: the ones this package runs
  (a NoETL kind not run here gets its own clear error).
* :func:`check_tool_config`: the problems of one task's config.
* :func:`register_kind`: a custom kind (``register_tool`` in ``runtime/tools/base.py`` calls it),
  with the tool's own ``validate`` as its check when it defines one.

Example::

    check_tool_config("shell", {})
    # [Problem(field='command', message='a shell tool needs `command:`', hint='add `command: echo hello`')]
    check_tool_config("http", {"url": "https://x", "method": "GET"})   # []
"""

from __future__ import annotations

import re
import textwrap
from functools import lru_cache
from pathlib import Path
from types import CodeType
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from noetl_dagster.core.templates import is_template
from noetl_dagster.errors import ToolError


class Problem(NamedTuple):
    """One problem of a tool config: the field (``auth.type``), what is wrong, how to fix it."""

    field: str
    message: str
    hint: str | None = None


#: a check of one kind's (unrendered) config; custom tools' ``validate`` methods have this shape
Check = Callable[[Mapping[str, Any]], "Sequence[tuple[str, str, str | None]]"]

#: Every tool kind NoETL knows; those not in :func:`supported_kinds` get a clear error.
NOETL_KINDS = frozenset({
    "python", "http", "postgres", "duckdb", "ducklake", "shell", "rhai", "noop", "playbook",
    "workbook", "transfer", "snowflake", "container", "script", "artifact", "nats",
    "subscription", "wasm", "task_sequence", "secrets", "iterator", "gcs", "gateway",
    "playbooks", "snowflake_transfer", "mcp", "provider", "result_fetch", "agent",
})


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


# -- SQL result formats (postgres, duckdb, snowflake) -----------------------------------------

#: ``format:`` of the SQL tools: ``rows`` (NoETL's ``{columns, rows, row_count}``) or ``arrow``
#: (a ``pyarrow.Table`` built by the driver: for products, DuckDB ``tables:`` and python steps)
RESULT_FORMATS = ("rows", "arrow")


def result_format(config: Mapping[str, Any]) -> str:
    """The (unrendered) ``format:`` of a SQL tool config, ``rows`` by default."""
    return str(config.get("format") or "rows")


def _format(config: Mapping[str, Any]) -> list[Problem]:
    if result_format(config) in RESULT_FORMATS:
        return []
    return [Problem("format", f"format {config.get('format')!r} is not one of {', '.join(RESULT_FORMATS)}",
                    "format: arrow")]


# -- python -----------------------------------------------------------------------------------

#: the function a step body with a top-level ``return`` is wrapped in (see :func:`compile_code`)
WRAPPED_BODY = "__noetl_body__"


@lru_cache(maxsize=1024)
def compile_code(source: str, filename: str) -> tuple[CodeType, bool]:
    """Compile step code; a body with a top-level ``return`` is wrapped in a function."""
    try:
        return compile(source, filename, "exec"), False
    except SyntaxError as exc:
        if "'return' outside function" not in str(exc):
            raise
    wrapped = f"def {WRAPPED_BODY}():\n" + textwrap.indent(source, "    ") + "\n"
    return compile(wrapped, filename, "exec"), True


#: the globals through which python step code reads the whole render scope (NoETL's wrapper)
CONTEXT_GLOBALS = frozenset({"context", "variables"})


def reads_context(code: CodeType) -> bool:
    """Does compiled step code (or a function it defines) read ``context``/``variables``?"""
    return not CONTEXT_GLOBALS.isdisjoint(_global_names(code))


def _global_names(code: CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _global_names(const)


#: script source types of ``kind: python`` (and ``kind: script``): ``script: {source: {type}}``
SCRIPT_SOURCE_TYPES = ("inline", "file", "http", "gcs", "s3")
#: config key the loader sets on python tasks with a ``script:``: the playbook file's folder
BASE_DIR_KEY = "_playbook_dir"
SCRIPT_SCHEMES = {"gcs": "gs://", "s3": "s3://"}
_SHAPE = "script: {uri: scripts/job.py, source: {type: file}}"


def uses_script(config: Mapping[str, Any]) -> bool:
    """True when the code comes from ``script:`` (a flat ``code:`` wins, as in NoETL)."""
    return config.get("code") is None and "script" in config


def script_source(config: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``(script, script.source, source type)`` of a config (type ``inline`` when not given)."""
    script = config.get("script")
    source = script.get("source") if isinstance(script, dict) else None
    kind = (source.get("type") if isinstance(source, dict) else None) or "inline"
    return script, source, kind


def script_path(uri: str, playbook_dir: str | Path) -> Path:
    """``uri`` resolved against ``playbook_dir``; :class:`ToolError` when it leaves that folder."""
    base = Path(playbook_dir).resolve()
    path = (base / uri).resolve()  # an absolute uri stays itself, then must be inside base too
    if path != base and base not in path.parents:
        raise ToolError(f"script file {uri!r} is outside the playbook's folder {base}")
    return path


def check_script(config: Mapping[str, Any], playbook_dir: str | Path | None = None) -> list[Problem]:
    """Problems of a ``script:`` block (a ``file`` source must exist when ``playbook_dir`` is known)."""
    script, source, kind = script_source(config)
    if not isinstance(script, dict):
        return [Problem("script", "`script` must be a mapping `{uri, source: {type: ...}}`", _SHAPE)]
    if source is not None and not isinstance(source, dict):
        return [Problem("script", "`script.source` must be a mapping such as `{type: file}`", _SHAPE)]
    if kind not in SCRIPT_SOURCE_TYPES:
        return [Problem("script", f"script source type {kind!r} is not one of {', '.join(SCRIPT_SOURCE_TYPES)}",
                        _SHAPE)]
    uri = script.get("uri")
    if uri is not None and not isinstance(uri, str):
        return [Problem("script", "`script.uri` must be a string")]
    source = source or {}
    if kind == "inline":
        code = source.get("code")
        if not isinstance(code, str):
            return [Problem("script", "an inline script needs `script.source.code` (a string)",
                            "script: {source: {type: inline, code: 'result = 1'}}")]
        if not is_template(code):
            try:
                compile_code(code, "<check>")
            except SyntaxError as exc:
                return [Problem("script", f"Python syntax error at script line {exc.lineno}: {exc.msg}")]
        return []
    if kind == "http":
        url = source.get("endpoint") or uri
        if not isinstance(url, str) or not url:
            return [Problem("script", "an http script needs `script.source.endpoint` (or `script.uri`): "
                            "the URL to GET")]
        if not is_template(url) and not url.startswith(("http://", "https://")):
            return [Problem("script", f"http script URL {url!r} must start with http:// or https://")]
        timeout = source.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            return [Problem("script", "`script.source.timeout` must be a number of seconds above 0")]
        return []
    if not uri:
        return [Problem("script", f"a {kind} script needs `script.uri`", _SHAPE if kind == "file" else
                        f"script: {{uri: {SCRIPT_SCHEMES[kind]}bucket/path/job.py, source: {{type: {kind}}}}}")]
    if is_template(uri):
        return []
    if kind in SCRIPT_SCHEMES:
        scheme = SCRIPT_SCHEMES[kind]
        bucket, _, key = uri.removeprefix(scheme).partition("/")
        if not uri.startswith(scheme) or not bucket or not key:
            return [Problem("script", f"a {kind} script uri must be {scheme}<bucket>/<object>, got {uri!r}")]
        return []
    if playbook_dir is not None:
        try:
            path = script_path(uri, playbook_dir)
        except ToolError as exc:
            return [Problem("script", str(exc), "keep scripts in the playbook's folder or below")]
        if not path.is_file():
            return [Problem("script", f"script file {uri!r} not found (looked for {path})",
                            "the path is relative to the playbook's folder")]
    return []


def check_python(config: Mapping[str, Any]) -> list[Problem]:
    """``kind: python``: ``code:`` that compiles, or a ``script:`` source (see :func:`check_script`)."""
    if uses_script(config):
        return check_script(config, config.get(BASE_DIR_KEY))
    code = config.get("code")
    if code is None:
        return [Problem("code", "a python tool needs `code:`", "add `code: | result = ...`")]
    if not isinstance(code, str):
        return [Problem("code", "`code` must be a string")]
    try:
        compile_code(code, "<check>")
    except SyntaxError as exc:
        return [Problem("code", f"Python syntax error at code line {exc.lineno}: {exc.msg}")]
    return []


# -- script (a python script in a Kubernetes Job) ---------------------------------------------

_RUST_SCRIPT_TYPES = {"inline": "inline", "local": "inline", "http": "http", "gcs": "gcs", "s3": "s3"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def normalize_script(script: Any) -> Any:
    """NoETL's Rust form ``{type, content, uri}`` as the python tool's ``{uri, source: {type}}``."""
    if not isinstance(script, Mapping) or "source" in script or "type" not in script:
        return script
    kind = _RUST_SCRIPT_TYPES.get(str(script.get("type")), str(script.get("type")))
    if kind == "inline":
        return {"source": {"type": "inline", "code": script.get("content")}}
    return {"uri": script.get("uri"), "source": {"type": kind}}


def script_job(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``job:`` block of a script tool (empty when absent or not a mapping)."""
    job = config.get("job")
    return job if isinstance(job, Mapping) else {}


def check_script_tool(config: Mapping[str, Any]) -> list[Problem]:
    """``kind: script``: a ``script:`` source, and a ``job:`` block of the right shapes."""
    if "script" not in config:
        return [Problem("script", "a script tool needs `script:` (where the script comes from)",
                        "script: {uri: gs://bucket/job.py, source: {type: gcs}}")]
    problems = check_script({"script": normalize_script(config["script"])}, config.get(BASE_DIR_KEY))
    job = config.get("job")
    if job is not None and not isinstance(job, Mapping):
        return problems + [Problem("job", "`job` must be a mapping (image, namespace, resources, env...)")]
    job = script_job(config)
    deps = job.get("install_dependencies")
    if deps is not None and not (isinstance(deps, list) and all(isinstance(d, str) for d in deps)):
        problems.append(Problem("job.install_dependencies", "`install_dependencies` must be a list of package names",
                                "install_dependencies: [requests]"))
    env = job.get("env")
    if env is not None and not isinstance(env, Mapping):
        problems.append(Problem("job.env", "`job.env` must map NAME: value"))
    elif isinstance(env, Mapping):
        bad = [k for k in env if not _ENV_NAME.match(str(k))]
        if bad:
            problems.append(Problem("job.env", f"environment variable name {bad[0]!r} is not valid"))
    for key in ("timeout", "backoffLimit", "backoff_limit"):
        value = job.get(key)
        if value is not None and not isinstance(value, str) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(Problem(f"job.{key}", f"`job.{key}` must be a whole number >= 0"))
    args = config.get("input", config.get("args"))
    if args is not None and not isinstance(args, (Mapping, str)):
        problems.append(Problem("input", "`input` (or `args`) must be a mapping"))
    return problems


# -- SQL tools ----------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_postgres(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if not (config.get("query") or config.get("command")):
        problems.append(Problem("query", "a postgres tool needs `query:` (or `command:`)"))
    auth = config.get("auth")
    if auth is not None and not isinstance(auth, (str, Mapping)):
        problems.append(Problem("auth", "`auth` must be a credential alias", "auth: pg_main"))
    params = config.get("params")
    if params is not None and not isinstance(params, (list, dict, str)):
        problems.append(Problem("params", "`params` must be a list or a mapping"))
    return problems + _format(config)


def check_duckdb(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if not (config.get("query") or config.get("command")):
        problems.append(Problem("query", "a duckdb tool needs `query:` (or `command:`)"))
    tables = config.get("tables")
    if tables is not None:
        if not isinstance(tables, Mapping):
            problems.append(Problem("tables", "`tables` must map table names to values"))
        else:
            for name in tables:
                if not _IDENTIFIER.match(str(name)):
                    problems.append(Problem("tables", f"table name {name!r} is not an identifier"))
    return problems + _format(config)


def ducklake_commands(config: Mapping[str, Any]) -> dict[str, Any]:
    """NoETL's ``commands: [...]`` as the duckdb tool's ``query`` list (run as one script)."""
    config = dict(config)
    if config.get("commands") and not (config.get("query") or config.get("command")):
        config["query"] = config["commands"]
    return config


def check_ducklake(config: Mapping[str, Any]) -> list[Problem]:
    config = ducklake_commands(config)
    problems = [p for p in check_duckdb(config) if p[0] != "query"]
    if not (config.get("query") or config.get("command")):
        problems.insert(0, Problem("command", "a ducklake tool needs `command:` (or `query:`, `commands:`)"))
    sources = [k for k in ("catalog_connection", "catalog_auth", "auth", "catalog_path") if config.get(k)]
    if not sources:
        problems.append(Problem("catalog_connection", "a ducklake tool needs its metadata catalog",
                                "catalog_connection: <postgres URL>, catalog_auth (or auth): <credential alias> "
                                "or catalog_path: <file>.ducklake"))
    elif len(sources) > 1:
        problems.append(Problem(sources[1], f"give one catalog, not {' and '.join(sources)}"))
    schema = config.get("metadata_schema")
    if schema and not _templated(schema) and not _IDENTIFIER.match(str(schema)):
        problems.append(Problem("metadata_schema", f"metadata_schema {schema!r} is not an identifier"))
    name = config.get("catalog_name")
    if name is not None and not _templated(name) and not _IDENTIFIER.match(str(name)):
        problems.append(Problem("catalog_name", f"catalog_name {name!r} is not an identifier", "e.g. sales_lake"))
    commands = config.get("commands")
    if commands is not None and not isinstance(commands, (list, str)):
        problems.append(Problem("commands", "`commands` must be a list of SQL statements"))
    return problems


def check_snowflake(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if not any(config.get(k) for k in ("command", "commands", "query", "command_b64", "commands_b64")):
        problems.append(Problem("command", "a snowflake tool needs `command:` (or `commands:`, `command_b64:`)"))
    if not (config.get("auth") or config.get("credential") or config.get("account")):
        problems.append(Problem("auth", "a snowflake tool needs `auth: <credential alias>` (or `account`, `user`...)",
                                "auth: sf_test"))
    params = config.get("params")
    if params is not None and not _templated(params) and not isinstance(params, list):
        problems.append(Problem("params", "`params` must be a list (bound to `?` placeholders)", "params: [1, 'x']"))
    commands = config.get("commands")
    if commands is not None and not _templated(commands) and not isinstance(commands, list):
        problems.append(Problem("commands", "`commands` must be a list of SQL statements"))
    return problems + _format(config)


# -- http ---------------------------------------------------------------------------------------

#: ``auth: {type: ...}`` spellings of the http tool, by the scheme each one means
HTTP_AUTH_TYPES = {
    "bearer": "bearer", "bearer_token": "bearer", "token": "bearer", "oauth2": "bearer",
    "basic": "basic", "http_basic": "basic",
    "api_key": "api_key", "apikey": "api_key", "api-key": "api_key", "header": "api_key",
    "none": "none",
}
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
HTTP_RESPONSE_TYPES = ("json", "text", "binary")


def check_http(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if not config.get("url") and not config.get("endpoint"):
        problems.append(Problem("url", "an http tool needs `url:`"))
    method = config.get("method")
    if isinstance(method, str) and "{{" not in method and method.upper() not in HTTP_METHODS:
        problems.append(Problem("method", f"unknown HTTP method {method!r}", ", ".join(sorted(HTTP_METHODS))))
    rtype = config.get("response_type")
    if isinstance(rtype, str) and "{{" not in rtype and rtype not in HTTP_RESPONSE_TYPES:
        problems.append(Problem("response_type", f"unknown response_type {rtype!r}", "json, text or binary"))
    auth = config.get("auth")
    if isinstance(auth, Mapping):
        kind = auth.get("type")
        if isinstance(kind, str) and "{{" not in kind and kind.lower() not in HTTP_AUTH_TYPES:
            problems.append(Problem("auth.type", f"auth type {kind!r} is not supported", "bearer, basic or api_key"))
    elif auth is not None and not isinstance(auth, str):
        problems.append(Problem("auth", "`auth` must be a credential alias or a mapping"))
    return problems


# -- shell, playbook ----------------------------------------------------------------------------

def check_shell(config: Mapping[str, Any]) -> list[Problem]:
    command = config.get("command", config.get("cmds"))
    if command is None or command == "" or command == []:
        return [Problem("command", "a shell tool needs `command:`", "add `command: echo hello`")]
    if not isinstance(command, (str, list)):
        return [Problem("command", "`command` must be a string or a list of strings")]
    env = config.get("env")
    if env is not None and not isinstance(env, (dict, str)):
        return [Problem("env", "`env` must be a mapping of NAME: value")]
    return []


def check_playbook(config: Mapping[str, Any]) -> list[Problem]:
    if not config.get("path"):
        return [Problem("path", "a playbook tool needs `path:` (the child's metadata.path)")]
    return []


# -- transfer -----------------------------------------------------------------------------------

TRANSFER_SOURCE_TYPES = ("postgres", "duckdb", "http", "snowflake")
TRANSFER_TARGET_TYPES = ("postgres", "duckdb", "snowflake")
TRANSFER_MODES = ("append", "replace", "upsert")


def check_transfer(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    source, target = config.get("source"), config.get("target")
    if not isinstance(source, Mapping):
        problems.append(Problem("source", "a transfer needs `source: {type, query | url, ...}`"))
    else:
        stype = source.get("type")
        if isinstance(stype, str) and "{{" not in stype and stype.lower() not in TRANSFER_SOURCE_TYPES:
            problems.append(Problem("source.type", f"unknown source type {stype!r}", ", ".join(TRANSFER_SOURCE_TYPES)))
    if not isinstance(target, Mapping):
        problems.append(Problem("target", "a transfer needs `target: {type, table, ...}`"))
    else:
        ttype = target.get("type")
        if isinstance(ttype, str) and "{{" not in ttype and ttype.lower() not in TRANSFER_TARGET_TYPES:
            problems.append(Problem("target.type", f"unknown target type {ttype!r}", ", ".join(TRANSFER_TARGET_TYPES)))
        if not target.get("table"):
            problems.append(Problem("target.table", "a transfer target needs `table`"))
        mode = target.get("mode", config.get("mode"))
        if isinstance(mode, str) and "{{" not in mode and mode.lower() not in TRANSFER_MODES:
            problems.append(Problem("target.mode", f"unknown mode {mode!r}", ", ".join(TRANSFER_MODES)))
        if mode == "upsert" and not (target.get("key") or target.get("keys") or target.get("primary_key")):
            problems.append(Problem("target.key", "upsert needs `key: [columns]`", "key: [id]"))
    return problems


# -- container ----------------------------------------------------------------------------------

def container_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """NoETL's nested ``runtime:`` block merged under the top-level keys."""
    cfg = dict(config)
    runtime = cfg.pop("runtime", None)
    if isinstance(runtime, Mapping):
        merged = {k: v for k, v in runtime.items() if k != "provider"}
        merged.update(cfg)
        cfg = merged
    return cfg


def check_container(config: Mapping[str, Any]) -> list[Problem]:
    cfg = container_fields(config)
    problems = []
    if not cfg.get("image"):
        problems.append(Problem("image", "a container tool needs `image:`", "add `image: python:3.12-slim`"))
    for key in ("command", "args"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, (str, list)):
            problems.append(Problem(key, f"`{key}` must be a list of strings (or one string)"))
    env = cfg.get("env")
    if env is not None and not isinstance(env, (dict, list, str)):
        problems.append(Problem("env", "`env` must be a mapping of NAME: value or a list of k8s EnvVars"))
    for key in ("resources", "node_selector", "labels"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, (dict, str)):
            problems.append(Problem(key, f"`{key}` must be a mapping"))
    for key in ("tolerations", "volumes", "volume_mounts"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, (list, str)):
            problems.append(Problem(key, f"`{key}` must be a list"))
    policy = cfg.get("restart_policy")
    if isinstance(policy, str) and "{{" not in policy and policy not in ("Never", "OnFailure"):
        problems.append(Problem("restart_policy", f"restart_policy {policy!r} is not allowed for a Job",
                                "use Never (default) or OnFailure"))
    return problems


# -- nats ---------------------------------------------------------------------------------------

#: nats operation -> the fields it needs (checked at load time when not templated)
NATS_OPERATIONS: dict[str, tuple[str, ...]] = {
    "kv_get": ("bucket", "key"), "kv_put": ("bucket", "key"), "kv_delete": ("bucket", "key"),
    "kv_keys": ("bucket",), "kv_purge": ("bucket", "key"),
    "object_get": ("bucket", "name"), "object_put": ("bucket", "name"),
    "object_delete": ("bucket", "name"), "object_list": ("bucket",),
    "object_info": ("bucket", "name"),
    "js_publish": ("subject",), "js_consume": ("stream", "consumer"), "js_get_msg": ("stream",),
    "js_stream_info": ("stream",),
    "publish": ("subject",), "request": ("subject",),
}
NATS_ENCODINGS = ("utf-8", "base64")


def check_nats(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    op = config.get("operation")
    if not op:
        problems.append(Problem("operation", "a nats tool needs `operation:`", "one of " + ", ".join(NATS_OPERATIONS)))
    elif not _templated(op):
        if op not in NATS_OPERATIONS:
            problems.append(Problem("operation", f"unknown nats operation {op!r}",
                                    "one of " + ", ".join(NATS_OPERATIONS)))
        else:
            for name in NATS_OPERATIONS[op]:
                if config.get(name) in (None, ""):
                    problems.append(Problem(name, f"nats operation {op!r} needs `{name}:`"))
            if op == "js_get_msg" and not (config.get("seq") is not None or config.get("last")
                                           or config.get("subject")):
                problems.append(Problem("seq", "js_get_msg needs one of `seq:`, `last: true` or `subject:`"))
    if not (config.get("url") or config.get("auth")):
        problems.append(Problem("url", "a nats tool needs `url:` or an `auth:` credential alias with a `url` field",
                                "url: nats://127.0.0.1:4222"))
    encoding = config.get("encoding")
    if encoding is not None and not _templated(encoding) and encoding not in NATS_ENCODINGS:
        problems.append(Problem("encoding", f"encoding {encoding!r} is not one of {', '.join(NATS_ENCODINGS)}"))
    headers = config.get("headers")
    if headers is not None and not _templated(headers) and not isinstance(headers, Mapping):
        problems.append(Problem("headers", "`headers` must map header names to values"))
    return problems


# -- artifact -----------------------------------------------------------------------------------

ARTIFACT_ACTIONS = ("get", "put")


def artifact_inputs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """An artifact tool's ``input:`` (alias ``args``) with its flat keys (``result_ref``...) merged under it."""
    value = cfg.get("input", cfg.get("args"))
    merged = dict(value) if isinstance(value, Mapping) else {}
    for key in ("result_ref", "ref", "data", "name", "select"):
        if key in cfg and key not in merged:
            merged[key] = cfg[key]
    return merged


def check_artifact(config: Mapping[str, Any]) -> list[Problem]:
    problems = []
    action = config.get("action", "get")
    if not _templated(action) and action not in ARTIFACT_ACTIONS:
        return [Problem("action", f"unknown artifact action {action!r}", "action: get | put")]
    inputs = artifact_inputs(config)
    where = "input" if isinstance(config.get("input", config.get("args")), Mapping) else "action"
    if action == "get" and not (inputs.get("result_ref") or inputs.get("ref")):
        problems.append(Problem(where, "artifact get needs `input: {result_ref: ...}`",
                                'input: {result_ref: "{{ step._ref }}"}'))
    if action == "put" and "data" not in inputs:
        problems.append(Problem(where, "artifact put needs `input: {data: ...}`", 'input: {data: "{{ step }}"}'))
    select = inputs.get("select")
    if select is not None and not _templated(select) and not isinstance(select, list):
        problems.append(Problem("input.select", "`select` must be a list of field names"))
    return problems


def _no_checks(config: Mapping[str, Any]) -> list[Problem]:
    return []


# -- the registry -------------------------------------------------------------------------------

#: the config check of each kind this package runs (``noop`` takes any config)
BUILTIN_CHECKS: dict[str, Check] = {
    "python": check_python, "noop": _no_checks, "duckdb": check_duckdb, "http": check_http,
    "postgres": check_postgres, "shell": check_shell, "playbook": check_playbook, "transfer": check_transfer,
    "container": check_container, "nats": check_nats, "ducklake": check_ducklake, "snowflake": check_snowflake,
    "artifact": check_artifact, "script": check_script_tool,
}
#: the tool kinds this package runs (its executors are in ``runtime/tools``)
RUN_KINDS = frozenset(BUILTIN_CHECKS)
_registered_kinds: set[str] = set()
_registered_checks: dict[str, Check] = {}


def register_kind(kind: str, check: Check | None = None) -> None:
    """Accept ``tool: {kind: <kind>}`` in playbooks; ``check`` (a tool's ``validate``) checks its config.

    Without a ``check`` a new kind takes any config, and a built-in kind keeps its built-in checks.
    """
    _registered_kinds.add(kind)
    if check is not None:
        _registered_checks[kind] = check


def supported_kinds() -> list[str]:
    """Tool kinds this package runs, custom ones included (``workbook`` is resolved at load time)."""
    return sorted({*RUN_KINDS, *_registered_kinds, "workbook"})


def check_tool_config(kind: str, config: Mapping[str, Any],
                      playbook_dir: str | Path | None = None) -> list[Problem]:
    """Problems of a ``kind`` task's unrendered ``config``; ``playbook_dir`` finds python ``script:`` files."""
    if kind == "python" and playbook_dir is not None and uses_script(config) and "python" not in _registered_checks:
        config = {**config, BASE_DIR_KEY: str(playbook_dir)}
    check = _registered_checks.get(kind) or BUILTIN_CHECKS.get(kind) or _no_checks
    return [Problem(*problem) for problem in check(config)]
