"""Plain data: task specs and records, node info, ids and the etcd key layout."""
from .task import TaskSpec, TaskRecord, TaskState, Attempt, EndedBy, FINAL_STATES
from .node import NodeInfo
from .ids import new_task_id, new_ids

__all__ = ["TaskSpec", "TaskRecord", "TaskState", "Attempt", "FINAL_STATES", "NodeInfo",
           "new_task_id", "new_ids"]
