"""Read replicas: which servers are in rotation, where each read goes, read-only sessions,
and the consistency tokens that let a client read its own writes."""

from .lsn import format_lsn, parse_lsn
from .rotation import ReplicaMember, ReplicaPolicy, ReplicaSet, ReplicaStatus

__all__ = [
    "ReplicaMember",
    "ReplicaPolicy",
    "ReplicaSet",
    "ReplicaStatus",
    "format_lsn",
    "parse_lsn",
]
