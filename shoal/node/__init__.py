"""The node process: a pure core that decides (core.py), the scheduler loop that carries
its decisions out, elected roles (the reaper), heartbeat. The HTTP API is attached by
api/server.py."""
