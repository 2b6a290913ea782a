"""Parse and validate playbooks (pydantic models with YAML line numbers)."""
