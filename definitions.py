"""`dagster dev` entry point: every playbook under ./playbooks as a Dagster job."""

from pathlib import Path

from noetl_dagster import load_playbook_definitions

defs = load_playbook_definitions(Path(__file__).parent / "playbooks")
