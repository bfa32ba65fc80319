from protos import replica_pb2 as _replica_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("replica_id", "address")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    address: str
    def __init__(self, replica_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: bool
    def __init__(self, added: _Optional[bool] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("replica_id",)
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    def __init__(self, replica_id: _Optional[str] = ...) -> None: ...

class DeregisterReply(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "usage", "replica_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    usage: _replica_pb2.Usage
    replica_id: str
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[_replica_pb2.Usage, _Mapping]] = ..., replica_id: _Optional[str] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("id", "address", "transport", "model", "gpu", "tier", "healthy", "draining", "circuit_open", "kv_usage", "queue_depth", "inflight_requests", "staleness_s", "last_snapshot_seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_OPEN_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SNAPSHOT_SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    transport: str
    model: str
    gpu: str
    tier: str
    healthy: bool
    draining: bool
    circuit_open: bool
    kv_usage: float
    queue_depth: int
    inflight_requests: int
    staleness_s: float
    last_snapshot_seq: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., transport: _Optional[str] = ..., model: _Optional[str] = ..., gpu: _Optional[str] = ..., tier: _Optional[str] = ..., healthy: _Optional[bool] = ..., draining: _Optional[bool] = ..., circuit_open: _Optional[bool] = ..., kv_usage: _Optional[float] = ..., queue_depth: _Optional[int] = ..., inflight_requests: _Optional[int] = ..., staleness_s: _Optional[float] = ..., last_snapshot_seq: _Optional[int] = ...) -> None: ...

class ListReplicasReply(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class ScorePart(_message.Message):
    __slots__ = ("scorer", "score")
    SCORER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    scorer: str
    score: float
    def __init__(self, scorer: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class CandidateScore(_message.Message):
    __slots__ = ("replica_id", "total", "parts")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    total: float
    parts: _containers.RepeatedCompositeFieldContainer[ScorePart]
    def __init__(self, replica_id: _Optional[str] = ..., total: _Optional[float] = ..., parts: _Optional[_Iterable[_Union[ScorePart, _Mapping]]] = ...) -> None: ...

class FilteredReplica(_message.Message):
    __slots__ = ("replica_id", "filter")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    filter: str
    def __init__(self, replica_id: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class LengthPrediction(_message.Message):
    __slots__ = ("mean", "p50", "p90")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    mean: float
    p50: float
    p90: float
    def __init__(self, mean: _Optional[float] = ..., p50: _Optional[float] = ..., p90: _Optional[float] = ...) -> None: ...

class RouteExplanation(_message.Message):
    __slots__ = ("request_id", "policy", "replica_id", "reason", "candidates", "filtered_out", "prompt_tokens", "block_count", "predicted_output", "ranked")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    FILTERED_OUT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RANKED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    policy: str
    replica_id: str
    reason: str
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateScore]
    filtered_out: _containers.RepeatedCompositeFieldContainer[FilteredReplica]
    prompt_tokens: int
    block_count: int
    predicted_output: LengthPrediction
    ranked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., policy: _Optional[str] = ..., replica_id: _Optional[str] = ..., reason: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[CandidateScore, _Mapping]]] = ..., filtered_out: _Optional[_Iterable[_Union[FilteredReplica, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., block_count: _Optional[int] = ..., predicted_output: _Optional[_Union[LengthPrediction, _Mapping]] = ..., ranked: _Optional[_Iterable[str]] = ...) -> None: ...
