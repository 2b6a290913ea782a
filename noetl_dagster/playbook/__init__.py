"""The DSL: playbook models with YAML line numbers, parsing and validation, references and the sub-playbook catalog."""
