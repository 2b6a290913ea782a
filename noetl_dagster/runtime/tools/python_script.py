"""``kind: python`` with a ``script:`` source instead of ``code:``, as NoETL's python tool reads it.

::

    tool:
      kind: python
      script:
        uri: scripts/transform.py         # file: relative to the playbook's folder
        source: {type: file}              # inline | file | http | gcs | s3
      input: {rows: "{{ fetch.rows }}"}

* ``inline``: ``source.code`` (rendered as a template, as NoETL's server renders every string
  of a tool's config).
* ``file``: ``uri`` (may be a template) is a path relative to the playbook's folder and must
  stay inside it (no ``..`` escape, no absolute path elsewhere); the file is read when the
  step runs and is not rendered.
* ``http``: GET (``source.method``) ``source.endpoint``, else ``uri``, with
  ``source.timeout`` seconds (default 30); a non-2xx answer fails the step.
* ``gcs`` (``gs://bucket/object``) and ``s3`` (``s3://bucket/key``): read through ``pyarrow.fs``
  with the deployment's credentials, as the Arrow IO manager reads ``s3://``/``gs://`` roots
  (``AWS_*`` variables incl. ``AWS_ENDPOINT_URL``; Google application-default credentials).

A flat ``code:`` wins over ``script:`` (NoETL's ``resolve_source``). :func:`load_script_source`
is the loader; :class:`PythonScriptTool` registers it for ``kind: python`` on top of
:class:`~noetl_dagster.runtime.tools.python.PythonTool` (which runs the loaded code unchanged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from noetl_dagster.playbook.kinds import (BASE_DIR_KEY, SCRIPT_SCHEMES, check_script, compile_code, script_path,
                                          script_source, uses_script)
from noetl_dagster.runtime.tools.base import ToolContext, ToolError
from noetl_dagster.runtime.tools.python import PythonTool

LOADED_KEY = "_script_loaded"
#: the largest script file or download read (bytes)
MAX_SCRIPT_BYTES = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0


def load_script_source(config: Mapping[str, Any], playbook_dir: str | Path | None, ctx: ToolContext) -> str:
    """The Python source a ``script:`` names, loaded now (see the module docstring).

    ``playbook_dir`` is the folder of the playbook file (file sources resolve against it);
    templates in ``uri``/``endpoint``/inline ``code`` render against ``ctx``. Raises
    :class:`ToolError` with a message naming the source.
    """
    problems = check_script(config)
    if problems:
        raise ToolError(problems[0][1])
    script, source, kind = script_source(config)
    source = source or {}
    if kind == "inline":
        code = ctx.render(source["code"])
        if not isinstance(code, str):
            raise ToolError("inline script code must render to a string")
        return code
    uri = ctx.render(script.get("uri"))
    if kind == "file":
        if playbook_dir is None:
            raise ToolError("a file script needs the playbook's folder (load the playbook from a file)")
        if not isinstance(uri, str) or not uri:
            raise ToolError("script.uri rendered to an empty value")
        path = script_path(uri, playbook_dir)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_SCRIPT_BYTES + 1)
        except FileNotFoundError:
            raise ToolError(f"script file {uri!r} not found (looked for {path})") from None
        except OSError as exc:
            raise ToolError(f"script file {uri!r} could not be read: {exc.strerror}") from None
        return _text(data, f"script file {uri!r}")
    if kind == "http":
        return _load_http(ctx.render(source.get("endpoint") or script.get("uri")), source, ctx)
    return _load_object(uri, kind)


def _load_object(uri: Any, kind: str) -> str:
    import pyarrow as pa
    import pyarrow.fs as pafs

    scheme = SCRIPT_SCHEMES[kind]
    if not isinstance(uri, str) or not uri.startswith(scheme) or "/" not in uri.removeprefix(scheme).strip("/"):
        raise ToolError(f"a {kind} script uri must render to {scheme}<bucket>/<object>")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as stream:
            data = stream.read(MAX_SCRIPT_BYTES + 1)
    except FileNotFoundError:
        raise ToolError(f"{kind} script {uri} not found") from None
    except (OSError, pa.ArrowException) as exc:
        raise ToolError(f"{kind} script {uri} could not be read: {exc}") from None
    return _text(data, f"{kind} script {uri}")


def _load_http(url: Any, source: Mapping[str, Any], ctx: ToolContext) -> str:
    import httpx

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ToolError("http script URL must render to an http:// or https:// URL")
    method = str(source.get("method") or "GET").upper()
    timeout = float(source.get("timeout") or DEFAULT_TIMEOUT)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            with client.stream(method, url) as response:
                if not response.is_success:
                    raise ToolError(f"http script {url} answered HTTP {response.status_code}")
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_SCRIPT_BYTES:
                        break
    except httpx.HTTPError as exc:
        raise ToolError(f"http script {url} could not be fetched: {type(exc).__name__}: {exc}") from None
    return _text(data, f"http script {url}")


def _text(data: bytes, what: str) -> str:
    if len(data) > MAX_SCRIPT_BYTES:
        raise ToolError(f"{what} is larger than {MAX_SCRIPT_BYTES // (1024 * 1024)} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{what} is not UTF-8 text") from None


class PythonScriptTool(PythonTool):
    """``kind: python``: :class:`PythonTool` plus ``script:`` sources (the code is loaded first)."""

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        if uses_script(config):
            code = load_script_source(config, config.get(BASE_DIR_KEY), ctx)
            try:
                compile_code(code, "<check>")
            except SyntaxError as exc:
                raise ToolError(f"Python syntax error at script line {exc.lineno}: {exc.msg}") from None
            # LOADED_KEY: the code is final (an inline source was rendered, a file is never rendered)
            config = {**config, "code": code, LOADED_KEY: True}
        return super().run(config, ctx)
