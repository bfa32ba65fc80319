"""Conversions between the pure-Python wire types and the generated protobuf messages."""

from __future__ import annotations

from protos import replica_pb2 as pb
from protos.snapshot import ReplicaSnapshot, Tier


def snapshot_to_proto(snapshot: ReplicaSnapshot, include_cache_events: bool = True) -> pb.Snapshot:
    return pb.Snapshot(
        replica_id=snapshot.replica_id,
        model=snapshot.model,
        gpu=snapshot.gpu,
        tier=snapshot.tier.value,
        seq=snapshot.seq,
        time=snapshot.time,
        total_blocks=snapshot.total_blocks,
        free_blocks=snapshot.free_blocks,
        cached_blocks=snapshot.cached_blocks,
        block_size=snapshot.block_size,
        num_running=snapshot.num_running,
        num_waiting=snapshot.num_waiting,
        waiting_prefill_tokens=snapshot.waiting_prefill_tokens,
        running_context_tokens=snapshot.running_context_tokens,
        preemptions_total=snapshot.preemptions_total,
        prefill_tokens_per_s=snapshot.prefill_tokens_per_s,
        decode_tokens_per_s=snapshot.decode_tokens_per_s,
        admitted_ids=snapshot.admitted_ids,
        healthy=snapshot.healthy,
        draining=snapshot.draining,
        new_cached_hashes=snapshot.new_cached_hashes if include_cache_events else (),
        evicted_hashes=snapshot.evicted_hashes if include_cache_events else (),
    )


def snapshot_from_proto(message: pb.Snapshot) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        replica_id=message.replica_id,
        model=message.model,
        gpu=message.gpu,
        tier=Tier(message.tier) if message.tier else Tier.CLOUD,
        seq=message.seq,
        time=message.time,
        total_blocks=message.total_blocks,
        free_blocks=message.free_blocks,
        cached_blocks=message.cached_blocks,
        block_size=message.block_size,
        num_running=message.num_running,
        num_waiting=message.num_waiting,
        waiting_prefill_tokens=message.waiting_prefill_tokens,
        running_context_tokens=message.running_context_tokens,
        preemptions_total=message.preemptions_total,
        prefill_tokens_per_s=message.prefill_tokens_per_s,
        decode_tokens_per_s=message.decode_tokens_per_s,
        admitted_ids=tuple(message.admitted_ids),
        healthy=message.healthy,
        draining=message.draining,
        new_cached_hashes=tuple(message.new_cached_hashes),
        evicted_hashes=tuple(message.evicted_hashes),
    )
