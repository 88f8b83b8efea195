"""The only code that spawns processes: task attempts, and the daemons of a local cluster."""
