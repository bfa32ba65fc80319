"""Builds the backend an :class:`AgentConfig` asks for."""

from __future__ import annotations

from fleetroute import __version__
from protos.text import ApproxTokenizer, Tokenizer, load_tokenizer
from replica_agent.backends.builtin import BuiltinBackend
from replica_agent.config import AgentConfig, ConfigError, ExecutorKind
from replica_agent.engine import Engine, EngineConfig, ReplicaIdentity
from replica_agent.executors.base import Executor
from replica_agent.executors.gpu_profiles import get_model_profile
from replica_agent.executors.output_lengths import LengthScriptedExecutor, OutputLengthDistribution
from replica_agent.service.backend import AgentInfo, Backend
from replica_agent.service.loop import EngineLoop
from replica_agent.service.runners import InstantRunner, RealtimeRunner, StepRunner, ThreadRunner
from replica_agent.sim_replica import build_sim_replica


def build_backend(config: AgentConfig, instant: bool = False) -> Backend:
    """``instant`` runs the sim executor with no modelled GPU time (the agent's own overhead)."""
    if config.executor is ExecutorKind.SIM:
        return _sim_backend(config, instant)
    if config.executor is ExecutorKind.TORCH:
        return _torch_backend(config)
    if config.executor is ExecutorKind.REMOTE:
        from replica_agent.backends.remote import RemoteBackend

        return RemoteBackend.from_config(config)
    from replica_agent.backends.vllm_engine import VllmBackend

    return VllmBackend.from_config(config)


def _info(config: AgentConfig, engine: Engine, tokenizer: Tokenizer) -> AgentInfo:
    return AgentInfo(
        replica_id=config.id,
        model=config.name,
        gpu=config.gpu,
        tier=config.tier.value,
        executor=config.executor.value,
        block_size=engine.config.block_size,
        num_blocks=engine.config.num_blocks,
        max_model_len=engine.max_seq_tokens,
        hash_seed=engine.config.hash_seed,
        version=__version__,
        tokenizer=tokenizer.name,
        served_model_names=(config.model,) if config.served_model_name else (),
    )


def _engine_settings(config: AgentConfig, eos_token_id: int | None) -> dict[str, object]:
    settings: dict[str, object] = {"record_cache_events": True, "eos_token_id": eos_token_id}
    settings.update(config.engine)
    return settings


def _sim_backend(config: AgentConfig, instant: bool) -> BuiltinBackend:
    tokenizer = _tokenizer(config, vocab_size=get_model_profile(config.model).vocab_size)
    try:
        replica = build_sim_replica(
            config.gpu,
            config.model,
            replica_id=config.id,
            tier=config.tier,
            seed=config.seed,
            gpu_memory_utilization=config.gpu_memory_utilization,
            **_engine_settings(config, tokenizer.eos_token_id),
        )
    except ValueError as error:
        raise ConfigError(f"engine: {error}") from None
    lengths = OutputLengthDistribution.parse(config.output_lengths, seed=config.seed)
    executor: Executor = replica.executor
    script = None
    if tokenizer.eos_token_id is not None:
        script = LengthScriptedExecutor(replica.executor, lengths, tokenizer.eos_token_id)
        executor = script
    runner: StepRunner = InstantRunner(executor) if instant else RealtimeRunner(executor, config.speedup)
    loop = EngineLoop(
        replica.engine,
        runner,
        snapshot_interval_s=config.snapshot_interval_s,
        max_buffered_tokens=config.max_buffered_tokens,
    )
    return BuiltinBackend(loop, tokenizer, _info(config, replica.engine, tokenizer), script)


def _torch_backend(config: AgentConfig) -> BuiltinBackend:
    from replica_agent.executors.torch_model import TinyLlamaConfig
    from replica_agent.executors.torch_runner import TorchExecutor

    settings = config.torch
    model_config = TinyLlamaConfig(
        vocab_size=settings.vocab_size, hidden_size=settings.hidden_size, num_layers=settings.num_layers
    )
    tokenizer = _tokenizer(config, vocab_size=settings.vocab_size)
    if tokenizer.vocab_size > settings.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens, the torch model {settings.vocab_size}"
        )
    engine_settings = {"num_blocks": settings.num_blocks, **_engine_settings(config, tokenizer.eos_token_id)}
    try:
        engine_config = EngineConfig.model_validate(engine_settings)
        executor = TorchExecutor(
            model_config,
            num_blocks=engine_config.num_blocks,
            block_size=engine_config.block_size,
            seed=config.seed,
            weights_path=settings.weights,
            num_threads=settings.threads,
        )
    except ValueError as error:
        raise ConfigError(f"torch executor: {error}") from None
    identity = ReplicaIdentity(replica_id=config.id, model=config.name, gpu=config.gpu, tier=config.tier)
    engine = Engine(engine_config, identity)
    loop = EngineLoop(
        engine,
        ThreadRunner(executor),
        snapshot_interval_s=config.snapshot_interval_s,
        max_buffered_tokens=config.max_buffered_tokens,
    )
    return BuiltinBackend(loop, tokenizer, _info(config, engine, tokenizer))


def _tokenizer(config: AgentConfig, vocab_size: int) -> Tokenizer:
    if config.tokenizer in (None, "", "approx"):
        # Seed 0 always: routers tokenize with the same function and must get the same ids.
        return ApproxTokenizer(vocab_size=vocab_size)
    try:
        return load_tokenizer(config.tokenizer)
    except ValueError as error:
        raise ConfigError(f"tokenizer: {error}") from None
