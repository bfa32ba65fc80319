from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor  # type: ignore[import-untyped]

from predictors.baselines import GlobalMeanPredictor
from predictors.data import split_by_prompt, to_features
from predictors.evaluate import evaluate
from predictors.features import FeatureConfig
from predictors.learned import fit_predictor
from predictors.sklearn_model import BoostedLengthModel, BoostingConfig, TreeEnsemble
from tests.predictors.synthetic import synthetic_rows


def test_flattened_trees_predict_exactly_what_sklearn_predicts() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(400, 6))
    matrix[rng.random(matrix.shape) < 0.05] = np.nan  # missing values take the learned side
    target = np.nan_to_num(matrix[:, 0]) * 3 + np.nan_to_num(matrix[:, 1]) ** 2 + rng.normal(size=400)
    estimators = [
        HistGradientBoostingRegressor(max_iter=30, max_depth=4, random_state=0).fit(matrix, target),
        HistGradientBoostingRegressor(loss="quantile", quantile=0.9, max_iter=20).fit(matrix, target),
    ]
    trees = TreeEnsemble.from_sklearn(estimators)
    expected = np.column_stack([e.predict(matrix) for e in estimators])
    np.testing.assert_allclose(trees.predict(matrix), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(trees.predict(matrix[5:6]), expected[5:6], rtol=1e-12, atol=1e-12)
    rebuilt = TreeEnsemble.from_arrays(trees.to_arrays())
    np.testing.assert_array_equal(rebuilt.predict(matrix), trees.predict(matrix))


def test_boosted_model_orders_its_quantiles_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(300, 4))
    lengths = np.round(np.exp(4 + matrix[:, 0] + 0.3 * rng.normal(size=300)))
    config = BoostingConfig(max_iter=40, max_features=0.5)
    model = BoostedLengthModel.fit(matrix, lengths, seed=3, config=config)
    estimates = model.predict(matrix)
    assert (estimates >= 0).all()
    assert np.mean(estimates[:, 2] >= estimates[:, 1]) > 0.95
    again = BoostedLengthModel.fit(matrix, lengths, seed=3, config=config)
    np.testing.assert_array_equal(again.predict(matrix), estimates)


def test_text_model_beats_the_global_mean_on_held_out_prompts() -> None:
    train, test = split_by_prompt(synthetic_rows(prompts=150), 0.3, seed=0)
    requests = [to_features(row) for row in train]
    lengths = [row.output_tokens for row in train]
    learned = fit_predictor(
        "sklearn",
        requests,
        lengths,
        [row.prompt_key for row in train],
        seed=0,
        feature_config=FeatureConfig(hash_features=1 << 12, svd_components=16),
        boosting=BoostingConfig(max_iter=100),
    )
    held_out = [to_features(row) for row in test]
    truth = [row.output_tokens for row in test]
    learned_eval = evaluate(learned, held_out, truth, latency_requests=5)
    mean_eval = evaluate(GlobalMeanPredictor.fit(lengths), held_out, truth, latency_requests=5)
    assert mean_eval.kendall_tau == 0.0
    assert learned_eval.kendall_tau > 0.6
    assert learned_eval.per_model_tau_mean > 0.5  # the text, not just the model, is used
    assert learned_eval.mae_tokens < mean_eval.mae_tokens
