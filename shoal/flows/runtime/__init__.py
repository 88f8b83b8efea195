"""The flow runtime: what runs inside a stage instance (reading sources, operators,
routing, merging, spilling, writing sinks) and the driver's checks and commits that touch
the same data. Needs the `flows` extra (polars, pyarrow, numpy; psycopg for PostgreSQL)."""
