"""The only code that talks to etcd: transactions for submit, claim, complete,
requeue and cancel; watches that resume from a revision; leases and elections."""
from .etcd import Store, KV, Completion, Claim, StepResult, WatchReset

__all__ = ["Store", "KV", "Completion", "Claim", "StepResult", "WatchReset"]
