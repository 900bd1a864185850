"""rollbackctl: durable launch-and-rollback automation (CLI, settings, stack, simulator)."""
