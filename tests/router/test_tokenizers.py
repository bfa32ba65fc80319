"""The router counts prompt tokens with a model's real tokenizer where one is configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from protos.generation import GenerateInput
from protos.text import render_chat
from router.config import RouterConfig, RouterConfigError, load_router_config
from router.service.router import Router

MODEL = "tiny-wordlevel"
SENTENCES = [
    "the router sends each request to the replica with the most room",
    "a replica with a warm cache answers the request sooner",
    "tokens are counted the way the model counts them",
]


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def router_with(tokenizers: dict[str, str]) -> Router:
    return Router(RouterConfig(http_port=0, grpc_port=0, tokenizers=tokenizers))


def prompt_tokens(
    router: Router, model: str, prompt: str | None = None, messages: tuple[tuple[str, str], ...] = ()
) -> int:
    request = GenerateInput(request_id="r1", model=model, max_tokens=4, prompt=prompt, messages=messages)
    shaped, _, _ = router.dispatcher.decide(request)
    return shaped.routing.prompt_tokens


def test_a_configured_model_is_counted_with_its_tokenizer_json(tokenizer_file: Path) -> None:
    router = router_with({MODEL: str(tokenizer_file)})
    reference = Tokenizer.from_file(str(tokenizer_file))
    prompt = "the replica with the most room answers sooner, unknown words too"
    expected = len(reference.encode(prompt, add_special_tokens=False).ids)
    assert prompt_tokens(router, MODEL, prompt=prompt) == expected
    assert expected != len(router.shaper.tokenizer("other-model").encode(prompt))
    messages = (("user", "count the tokens"),)
    chat_expected = len(reference.encode(render_chat(messages), add_special_tokens=False).ids)
    assert prompt_tokens(router, MODEL, messages=messages) == chat_expected
    assert router.shaper.tokenizer(MODEL).eos_token_id == reference.token_to_id("</s>")


def test_a_directory_holding_tokenizer_json_works_too(tokenizer_file: Path) -> None:
    router = router_with({MODEL: str(tokenizer_file.parent)})
    assert prompt_tokens(router, MODEL, prompt="the router") == 2


def test_other_models_keep_the_approximate_tokenizer(tokenizer_file: Path) -> None:
    router = router_with({MODEL: str(tokenizer_file)})
    assert router.shaper.tokenizer("llama-3.1-8b").name == "approx"


def test_the_setting_loads_from_router_yaml(tokenizer_file: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "router.yaml"
    config_file.write_text(f"tokenizers:\n  {MODEL}: {tokenizer_file}\n")
    assert load_router_config(config_file).tokenizers == {MODEL: str(tokenizer_file)}
    config_file.write_text(f"tokenizers:\n  {MODEL}: ''\n")
    with pytest.raises(RouterConfigError, match=f"tokenizers.{MODEL}"):
        load_router_config(config_file)


@pytest.mark.parametrize("contents", [None, "not json", '{"model": {"type": "Nothing"}}'])
def test_a_missing_or_invalid_tokenizer_is_a_one_line_config_error(
    tmp_path: Path, contents: str | None
) -> None:
    path = tmp_path / "tokenizer.json"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(RouterConfigError) as caught:
        router_with({MODEL: str(path)})
    message = str(caught.value)
    assert message.startswith(f"tokenizers.{MODEL}: ") and str(path) in message
    assert "\n" not in message
