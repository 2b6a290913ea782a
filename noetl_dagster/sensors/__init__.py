"""Event-log export sensors (ClickHouse, Qdrant) — built by the event-export issue."""
