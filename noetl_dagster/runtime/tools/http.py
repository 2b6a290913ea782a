"""``kind: http``: one HTTP request with httpx.

Result ``{status_code, headers, data, body}`` where ``data`` (and ``body``) is the parsed JSON
for ``response_type: json`` (the default when the response says JSON), text, or base64 for
``binary``. A non-2xx status completes the step so that arcs can route on
``output.status_code``; a transport error or timeout fails it.
"""

from __future__ import annotations

import base64
from typing import Any

from .base import Tool, ToolContext, ToolError


class HttpTool(Tool):
    kind = "http"

    def validate(self, config):  # type: ignore[no-untyped-def]
        if not config.get("url") and not config.get("endpoint"):
            return [("url", "an http tool needs `url:`", None)]
        return []

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        import httpx

        cfg = ctx.render({k: v for k, v in config.items() if k != "auth"})
        url = cfg.get("url") or cfg.get("endpoint")
        method = str(cfg.get("method") or "GET").upper()
        params = {k: str(v) for k, v in (cfg.get("params") or {}).items() if v is not None}
        timeout = float(cfg.get("timeout_seconds") or cfg.get("timeout") or 30)
        request: dict[str, Any] = {"headers": cfg.get("headers") or None, "params": params or None}
        if "json" in cfg:
            request["json"] = cfg["json"]
        elif "form" in cfg:
            request["data"] = cfg["form"]
        elif "body" in cfg or "data" in cfg:
            body = cfg.get("body", cfg.get("data"))
            if isinstance(body, (dict, list)):
                request["json"] = body
            else:
                request["content"] = body
        try:
            with httpx.Client(timeout=timeout, follow_redirects=bool(cfg.get("follow_redirects", True))) as client:
                response = client.request(method, str(url), **request)
        except httpx.TimeoutException:
            raise ToolError(f"{method} {url} timed out after {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from None
        response_type = cfg.get("response_type")
        content_type = response.headers.get("content-type", "")
        if response_type == "binary":
            data: Any = base64.b64encode(response.content).decode()
        elif response_type == "json" or (response_type is None and "json" in content_type):
            try:
                data = response.json() if response.content else None
            except ValueError:
                if response_type == "json":
                    raise ToolError(
                        f"{method} {url} answered {response.status_code} with a body that is not "
                        f"JSON (content-type {content_type or 'unset'}); set response_type: text"
                    ) from None
                data = response.text
        else:
            data = response.text
        return {
            "status_code": response.status_code,
            "headers": dict(response.headers),
            "data": data,
            "body": data,
        }
