"""Dagster resources (Arrow/Parquet IO manager, credentials, sinks) — see the issues that build them."""
