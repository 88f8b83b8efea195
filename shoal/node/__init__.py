"""The node process: API server, scheduler (claim, run, complete), reaper, heartbeat."""
