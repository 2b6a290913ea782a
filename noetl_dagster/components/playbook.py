"""``PlaybookComponent``: a playbook file or folder as the definitions of a ``dg`` project.

``defs.yaml``::

    type: noetl_dagster.components.PlaybookComponent
    attributes:
      path: playbooks                    # file or folder, relative to this defs.yaml's folder
      strict: false                      # true: one broken playbook fails the whole load
      translator: my_project.translators:MyTranslator   # optional PlaybookTranslator subclass
      tags: {team: risk}                 # optional extra tags on every job (and its runs)

Several PlaybookComponents may live in one project: they share one set of resources
(``noetl_credentials`` from the environment, the ``io_manager``, the sub-playbook catalog), since
Dagster merges a resource key only when every component holds the same object. A project that
defines its own resource under one of these keys must leave it to the components.

Templates: ``dg`` resolves ``{{ ... }}`` in the *attributes* of ``defs.yaml`` at load time
(``{{ env('PLAYBOOK_DIR') }}`` works in ``path``). The playbooks themselves are **not** part of
the attributes: they are read from their files by :func:`noetl_dagster.load_playbook_definitions`
when ``build_defs`` runs, so NoETL templates such as ``{{ workload.x }}`` reach the runtime
untouched. ``defs.yaml``/``defs.yml`` files under ``path`` are never taken for playbooks.
"""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from noetl_dagster.playbook.catalog import PlaybookCatalog
from noetl_dagster.playbook.folder import find_playbooks, load_playbooks
from noetl_dagster.translator.definitions import load_playbook_definitions
from noetl_dagster.translator.translator import PlaybookTranslator
from noetl_dagster.translator.emit import default_resources

#: files a ``dg`` defs folder uses for component declarations, never playbooks
DEFS_FILES = frozenset({"defs.yaml", "defs.yml"})

#: Resources every PlaybookComponent of the process shares. dg merges the components' Definitions
#: and Dagster only merges a resource key when both sides hold the *same* object, so the
#: components hand out one credentials resource, one IO manager and one sub-playbook catalog
#: (holding the playbooks of every component loaded in this process).
_SHARED_CATALOG = PlaybookCatalog()
_SHARED_RESOURCES: dict[str, Any] = {}


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


@dg.scaffold_with(PlaybookScaffolder)
class PlaybookComponent(dg.Component, dg.Resolvable, dg.Model):
    """NoETL playbooks (a file or a folder, searched recursively) compiled into Dagster jobs.

    Each playbook becomes a job named from ``metadata.path`` (``risk/score_application`` →
    ``risk__score_application``); see :func:`noetl_dagster.load_playbook_definitions`.
    """

    path: str = Field(
        description="A playbook file or a folder of playbooks (searched recursively), relative to "
                    "the folder of this defs.yaml, or absolute.",
        examples=["playbooks", "risk/score_application.yaml"],
    )
    strict: bool = Field(
        default=False,
        description="Fail the whole load on the first broken playbook (default: log it and skip it).",
    )
    translator: str | None = Field(
        default=None,
        description="Import path of a PlaybookTranslator subclass, `package.module:Class` or "
                    "`package.module.Class`, instantiated without arguments.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Extra tags on every job (and so on its runs).",
    )

    def playbook_files(self, context: dg.ComponentLoadContext) -> list[Path]:
        """The playbook files this component loads (``defs.yaml`` files left out)."""
        root = Path(self.path)
        if not root.is_absolute():
            root = Path(context.path) / root
        if not root.exists():
            raise FileNotFoundError(f"PlaybookComponent at {context.path}: path {self.path!r} "
                                    f"does not exist ({root})")
        return [p for p in find_playbooks(root) if p.name not in DEFS_FILES]

    def get_translator(self) -> PlaybookTranslator:
        """The translator: ``translator`` (if set) with ``tags`` added to every job."""
        translator = load_translator(self.translator) if self.translator else PlaybookTranslator()
        return with_job_tags(translator, self.tags) if self.tags else translator

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        files = self.playbook_files(context)
        if not files:
            return dg.Definitions()
        # sub-playbooks are looked up at run time in the shared catalog (checked at load time
        # against this component's playbooks)
        _SHARED_CATALOG.playbooks.update(PlaybookCatalog.of(load_playbooks(files).playbooks).playbooks)
        defs = load_playbook_definitions(files, translator=self.get_translator(), strict=self.strict,
                                         resources=shared_resources())
        return with_shared_resources(defs)


def shared_resources() -> dict[str, Any]:
    """The resource objects all PlaybookComponents of this process pass to their definitions."""
    if not _SHARED_RESOURCES:
        _SHARED_RESOURCES.update(default_resources(None, _SHARED_CATALOG, io_manager=True))
    return _SHARED_RESOURCES


def with_shared_resources(defs: dg.Definitions) -> dg.Definitions:
    """``defs`` with every top-level resource replaced by the process-wide object for its key
    (the first one seen for a key the defaults do not have)."""
    from noetl_dagster.compat import copy_record as copy

    resources = dict(defs.resources or {})
    shared = {key: _SHARED_RESOURCES.setdefault(key, value) for key, value in resources.items()}
    if all(shared[key] is resources[key] for key in resources):
        return defs
    return copy(defs, resources=shared)


def load_translator(import_path: str) -> PlaybookTranslator:
    """Instantiate ``module:Class`` (or ``module.Class``), checking it is a PlaybookTranslator."""
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"translator {import_path!r}: write `package.module:Class`")
    cls: Any = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, PlaybookTranslator)):
        raise TypeError(f"translator {import_path!r} is not a PlaybookTranslator subclass")
    return cls()


def with_job_tags(translator: PlaybookTranslator, tags: dict[str, str]) -> PlaybookTranslator:
    """A copy of ``translator`` whose ``get_job_tags`` also returns ``tags``."""
    base = type(translator)
    extra = {str(k): str(v) for k, v in tags.items()}

    def get_job_tags(self, playbook):  # type: ignore[no-untyped-def]
        return {**base.get_job_tags(self, playbook), **extra}

    tagged_cls = type(f"Tagged{base.__name__}", (base,), {"get_job_tags": get_job_tags})
    tagged = object.__new__(tagged_cls)
    tagged.__dict__.update(getattr(translator, "__dict__", {}))
    return tagged
