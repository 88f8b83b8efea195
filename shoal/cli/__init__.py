"""The `shoal` command: verbs on nouns users know. Uses only the SDK (and the local
cluster launcher for up/down/node)."""
