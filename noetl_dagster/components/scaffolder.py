"""``dg scaffold defs noetl_dagster.components.PlaybookComponent <name>``: writes ``defs.yaml``
pointing at a playbook file or folder and, unless ``--path`` names existing playbooks, an example
playbook under ``playbooks/``."""

from __future__ import annotations

import textwrap

import dagster as dg
from pydantic import BaseModel, Field


class PlaybookScaffoldParams(BaseModel):
    """Parameters of ``dg scaffold defs noetl_dagster.components.PlaybookComponent <name>``."""

    path: str | None = Field(
        default=None,
        description="An existing playbook file or folder (relative to the new defs folder, or "
                    "absolute). Leave it out to get an example playbook under `playbooks/`.",
    )


class PlaybookScaffolder(dg.Scaffolder[PlaybookScaffoldParams]):
    """Writes ``defs.yaml`` and, unless ``path`` is given, an example playbook."""

    @classmethod
    def get_scaffold_params(cls) -> type[PlaybookScaffoldParams]:
        return PlaybookScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[PlaybookScaffoldParams]) -> None:
        from dagster.components.component_scaffolding import scaffold_component

        params = request.params if isinstance(request.params, PlaybookScaffoldParams) else PlaybookScaffoldParams()
        path = params.path
        if path is None:
            path = "playbooks"
            folder = request.target_path / path
            folder.mkdir(parents=True, exist_ok=True)
            example = folder / "hello.yaml"
            if not example.exists():
                example.write_text(example_playbook(request.target_path.name))
        scaffold_component(request, {"path": path})


def example_playbook(domain: str) -> str:
    """A small valid playbook (job ``<domain>__hello``) whose templates stay NoETL's."""
    domain = "".join(c if c.isalnum() or c == "_" else "_" for c in domain) or "example"
    return textwrap.dedent(f"""\
        # Example NoETL playbook scaffolded by `dg scaffold defs noetl_dagster.components.PlaybookComponent`.
        # The `{{{{ ... }}}}` templates are NoETL's: rendered when the step runs, never by dg.
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata:
          name: hello
          path: {domain}/hello
          description: Greet everyone in the workload, then count the greetings.
        workload:
          greeting: hello
          names: [ada, grace]
        workflow:
          - step: start
            desc: Build one greeting per name.
            tool:
              kind: python
              input:
                greeting: "{{{{ workload.greeting }}}}"
                names: "{{{{ workload.names }}}}"
              code: |
                result = [greeting + ", " + name for name in names]
            next: end

          - step: end
            desc: Count the greetings.
            tool:
              kind: python
              input:
                greetings: "{{{{ start }}}}"
              code: |
                result = {{"count": len(greetings), "first": greetings[0]}}
        """)
