"""Wire types shared by routers and replica agents: block hashing and load snapshots."""

from protos.block_hash import BlockHasher
from protos.snapshot import ReplicaSnapshot

__all__ = ["BlockHasher", "ReplicaSnapshot"]
