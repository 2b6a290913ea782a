"""The Dagster adapter: the translator (names, asset specs, timeouts), the emitter that wires ops, jobs and assets, and the definitions loader."""
