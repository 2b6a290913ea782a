"""``kind: noop``: routing and terminal steps; returns its rendered ``result:`` if it has one."""

from __future__ import annotations

from typing import Any

from noetl_dagster.runtime.tools.base import Tool, ToolContext


class NoopTool(Tool):
    kind = "noop"

    def run(self, config: dict[str, Any], ctx: ToolContext) -> Any:
        if "result" in config:
            return ctx.render(config["result"])
        if "message" in config:
            return {"message": ctx.render(config["message"])}
        return None
