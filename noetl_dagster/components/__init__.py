"""Dagster Components (``dg``) for NoETL playbooks.

A ``dg`` project points a ``defs.yaml`` at a playbook file or a folder of playbooks::

    # src/<project>/defs/risk/defs.yaml
    type: noetl_dagster.components.PlaybookComponent
    attributes:
      path: playbooks            # relative to this defs.yaml's folder (or absolute)

Scaffold one with ``dg scaffold defs noetl_dagster.components.PlaybookComponent risk``.

This module is the package's ``dagster_dg_cli.registry_modules`` entry, so ``dg list
components`` shows :class:`PlaybookComponent` once ``noetl-dagster`` is installed.

``component.py`` holds the component (and the resources its instances share in one project load),
``scaffolder.py`` what ``dg scaffold defs`` writes.
"""

from noetl_dagster.components.component import PlaybookComponent
from noetl_dagster.components.scaffolder import PlaybookScaffolder, PlaybookScaffoldParams

__all__ = ["PlaybookComponent", "PlaybookScaffolder", "PlaybookScaffoldParams"]
