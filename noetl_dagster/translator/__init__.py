"""Plan (pure) and emit (Dagster) a playbook."""
