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
Dagster merges a resource key only when every component holds the same object. The shared set
belongs to the project's load (:class:`SharedResources`, kept on dg's component tree), not to the
process: two projects, or two loads, never see each other's playbooks. A project that defines its
own resource under one of these keys must leave it to the components.

Templates: ``dg`` resolves ``{{ ... }}`` in the *attributes* of ``defs.yaml`` at load time
(``{{ env('PLAYBOOK_DIR') }}`` works in ``path``). The playbooks themselves are **not** part of
the attributes: they are read from their files by :func:`noetl_dagster.load_playbook_definitions`
when ``build_defs`` runs, so NoETL templates such as ``{{ workload.x }}`` reach the runtime
untouched. ``defs.yaml``/``defs.yml`` files under ``path`` are never taken for playbooks.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterable

import dagster as dg
from pydantic import Field

from noetl_dagster.components.scaffolder import PlaybookScaffolder
from noetl_dagster.playbook.catalog import PlaybookCatalog
from noetl_dagster.playbook.folder import find_playbooks, load_playbooks
from noetl_dagster.playbook.models import Playbook
from noetl_dagster.translator.definitions import load_playbook_definitions
from noetl_dagster.translator.emit import default_resources
from noetl_dagster.translator.translator import PlaybookTranslator

#: files a ``dg`` defs folder uses for component declarations, never playbooks
DEFS_FILES = frozenset({"defs.yaml", "defs.yml"})


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
        return JobTagsTranslator(translator, self.tags) if self.tags else translator

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        files = self.playbook_files(context)
        if not files:
            return dg.Definitions()
        shared = SharedResources.of(context)
        # sub-playbooks are looked up at run time in the shared catalog (checked at load time
        # against this component's playbooks)
        shared.add_playbooks(load_playbooks(files).playbooks)
        defs = load_playbook_definitions(files, translator=self.get_translator(), strict=self.strict,
                                         resources=shared.resources)
        return shared.bind(defs)


class SharedResources:
    """The resources every PlaybookComponent of one project load hands to its definitions.

    dg merges the components' Definitions and Dagster only merges a resource key when both sides
    hold the *same* object, so the components of a project share one credentials resource, one IO
    manager and one sub-playbook catalog (holding the playbooks of every component). One instance
    lives on the load's component tree (:meth:`of`), so it is as old as the load that uses it.
    """

    #: the key of the instance in the component tree's attributes
    KEY = "noetl_dagster.components.SharedResources"

    def __init__(self) -> None:
        self.catalog = PlaybookCatalog()
        self.resources: dict[str, Any] = default_resources(None, self.catalog, io_manager=True)

    @classmethod
    def of(cls, context: dg.ComponentLoadContext) -> SharedResources:
        """The instance of the project ``context`` loads (made by the first component that asks)."""
        state = vars(context.component_tree)
        shared = state.get(cls.KEY)
        if not isinstance(shared, cls):
            shared = state[cls.KEY] = cls()
        return shared

    def add_playbooks(self, playbooks: Iterable[Playbook]) -> None:
        """Make ``playbooks`` callable as sub-playbooks from any component's jobs."""
        self.catalog.playbooks.update(PlaybookCatalog.of(playbooks).playbooks)

    def bind(self, defs: dg.Definitions) -> dg.Definitions:
        """``defs`` with every top-level resource replaced by the shared object for its key (the
        first one seen for a key the defaults do not have)."""
        from noetl_dagster.compat import copy_record as copy

        resources = dict(defs.resources or {})
        shared = {key: self.resources.setdefault(key, value) for key, value in resources.items()}
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


class JobTagsTranslator(PlaybookTranslator):
    """``translator`` with ``tags`` added to every job's tags (and so to its runs).

    A wrapper, not a subclass made at run time: every :class:`PlaybookTranslator` method but
    :meth:`get_job_tags` is the wrapped translator's own (the delegating methods are defined once
    below, from the base class), and any other attribute is read from it too.
    """

    def __init__(self, translator: PlaybookTranslator, tags: dict[str, str]) -> None:
        self.translator = translator
        self.tags = {str(k): str(v) for k, v in tags.items()}

    def get_job_tags(self, playbook: Playbook) -> dict[str, str]:
        return {**self.translator.get_job_tags(playbook), **self.tags}

    def __getattr__(self, name: str) -> Any:  # attributes a translator subclass adds
        if name == "translator":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.translator, name)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: JobTagsTranslator, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.translator, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(PlaybookTranslator, name).__doc__
    return method


for _name, _ in inspect.getmembers(PlaybookTranslator, inspect.isfunction):
    if not _name.startswith("_") and _name != "get_job_tags":
        setattr(JobTagsTranslator, _name, _delegate(_name))
del _name, _
