"""Clusters as a whole: starting and stopping them (local today)."""
