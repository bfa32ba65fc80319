"""A small synthetic length dataset whose answer length depends on the prompt's words and the model."""

from __future__ import annotations

import random

from predictors.data import LengthRow

TOPICS = ("cats", "rivers", "taxes", "compilers", "gardens", "volcanoes", "jazz", "bridges", "tea", "chess")
SHAPES = (  # (request wording, typical answer tokens)
    ("Answer with one word: what colour are", 3),
    ("Give a short sentence about", 20),
    ("List five facts about", 80),
    ("Explain in detail how to think about", 250),
    ("Write a long essay on", 600),
)
MODELS = {"terse-model": 0.6, "verbose-model": 1.6}


def synthetic_rows(prompts: int = 120, seed: int = 0) -> list[LengthRow]:
    """``prompts`` distinct prompts, each answered by both models, with log-normal noise."""
    rng = random.Random(seed)
    rows = []
    for index in range(prompts):
        wording, typical = SHAPES[index % len(SHAPES)]
        prompt = f"{wording} {rng.choice(TOPICS)} number {index}?"
        for model, factor in MODELS.items():
            length = max(1, round(typical * factor * rng.lognormvariate(0.0, 0.3)))
            rows.append(LengthRow(prompt, length, model, prompt_id=str(index)))
    return rows
