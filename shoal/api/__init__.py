"""The HTTP API every node serves; any node answers for the whole cluster."""
