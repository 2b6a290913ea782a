"""AI tuning jobs that learn from run history — built by the tuning issue."""
