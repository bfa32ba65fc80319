from protos.text import ApproxTokenizer, render_chat


def test_equal_prefixes_give_equal_token_prefixes() -> None:
    tokenizer = ApproxTokenizer()
    shared = "You are a helpful assistant. Answer briefly."
    a = tokenizer.encode(shared + "\nWhat is paged attention?")
    b = tokenizer.encode(shared + " Why do GPUs have HBM?")
    common = tokenizer.encode(shared)
    assert a[: len(common)] == b[: len(common)] == common
    assert a != b


def test_roughly_four_characters_per_token() -> None:
    text = "Continuous batching keeps every decode slot busy while new prompts are prefilled. " * 20
    count = ApproxTokenizer().count(text)
    assert 3.0 <= len(text) / count <= 5.0


def test_ids_stay_in_the_vocabulary_above_reserved_ids() -> None:
    tokenizer = ApproxTokenizer(vocab_size=64, reserved=16)
    ids = tokenizer.encode("some text, with punctuation! and numbers 12345 " * 10)
    assert ids and all(16 <= t < 64 for t in ids)


def test_decoding_is_deterministic_filler_and_eos_is_silent() -> None:
    tokenizer = ApproxTokenizer()
    words = [tokenizer.decode_token(t, [1] * i) for i, t in enumerate([100, 200, 300])]
    assert words == [tokenizer.decode_token(t, [1] * i) for i, t in enumerate([100, 200, 300])]
    assert not words[0].startswith(" ") and words[1].startswith(" ")
    assert tokenizer.decode_token(2, [5]) == ""


def test_chat_template_ends_where_the_answer_begins() -> None:
    prompt = render_chat([("system", "Be brief."), ("user", "Hi")])
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
