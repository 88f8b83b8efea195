"""Flows: records in batches moving through stages of operators, commands and functions."""
