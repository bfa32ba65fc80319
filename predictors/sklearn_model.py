"""Gradient-boosted trees for the output length: scikit-learn's ``HistGradientBoostingRegressor``
with the quantile loss for p50 and p90 (on ``log(1 + tokens)``; quantiles survive the monotone
transform) and the squared-error loss for the mean (on tokens).

scikit-learn's per-call overhead on a single row is larger than the router's latency budget, so the
fitted trees are copied into flat numpy arrays (:class:`TreeEnsemble`) and evaluated here: all
trees advance one level per step, so a prediction costs one vectorised step per tree level. The
arrays are plain numbers, saved without pickle; a test checks them against scikit-learn's ``predict``.
Fitting imports scikit-learn lazily, so inference does not need it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

TREE_ARRAYS = ("feature", "threshold", "left", "right", "value", "missing_left", "roots", "tree_output")


@dataclass(frozen=True, slots=True)
class BoostingConfig:
    """``max_depth`` bounds the number of vectorised steps per prediction; ``max_features`` is the
    fraction of features each split may look at."""

    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    max_depth: int = 6
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0
    max_features: float = 1.0

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.max_leaf_nodes < 2 or self.min_samples_leaf < 1 or self.max_depth < 1:
            raise ValueError(f"invalid boosting config {self}")
        if not 0 < self.learning_rate <= 1 or not 0 < self.max_features <= 1:
            raise ValueError(f"learning_rate and max_features must be in (0, 1], got {self}")


@dataclass(frozen=True, eq=False, slots=True)
class TreeEnsemble:
    """Regression trees of several outputs flattened into one node table. Node ``i`` sends a row to
    ``left[i]`` when ``x[feature[i]] <= threshold[i]`` (a missing value follows ``missing_left[i]``),
    else to ``right[i]``; a leaf points to itself, so ``depth`` steps from ``roots`` reach every
    leaf. Output ``k`` is ``baselines[k]`` plus the values of the leaves reached in the trees whose
    ``tree_output`` is ``k``."""

    feature: np.ndarray  # (nodes,) int64
    threshold: np.ndarray  # (nodes,) float64
    left: np.ndarray  # (nodes,) int64
    right: np.ndarray  # (nodes,) int64
    value: np.ndarray  # (nodes,) float64, zero except at leaves
    missing_left: np.ndarray  # (nodes,) bool
    roots: np.ndarray  # (trees,) int64
    tree_output: np.ndarray  # (trees,) int64
    baselines: np.ndarray  # (outputs,) float64
    depth: int
    assignment: np.ndarray = field(init=False, repr=False)  # (trees, outputs) one-hot of tree_output

    def __post_init__(self) -> None:
        nodes, trees = self.feature.shape[0], self.roots.shape[0]
        if any(getattr(self, name).shape != (nodes,) for name in TREE_ARRAYS[:6]):
            raise ValueError("tree arrays must all have one entry per node")
        if self.tree_output.shape != (trees,) or self.baselines.ndim != 1:
            raise ValueError("tree_output needs one entry per tree and baselines one per output")
        if nodes and (
            min(self.left.min(), self.right.min(), self.roots.min()) < 0
            or max(self.left.max(), self.right.max(), self.roots.max()) >= nodes
        ):
            raise ValueError("tree arrays point outside the node table")
        if trees and not 0 <= self.tree_output.min() <= self.tree_output.max() < self.baselines.size:
            raise ValueError("tree_output names an output that has no baseline")
        assignment = np.zeros((trees, self.baselines.size))
        assignment[np.arange(trees), self.tree_output] = 1.0
        object.__setattr__(self, "assignment", assignment)

    @property
    def outputs(self) -> int:
        return int(self.baselines.size)

    @classmethod
    def from_sklearn(cls, estimators: Sequence[Any]) -> TreeEnsemble:
        """Copy fitted single-output ``HistGradientBoostingRegressor``s (numerical features only),
        one output per estimator."""
        parts, outputs = [], []
        for output, estimator in enumerate(estimators):
            for trees in estimator._predictors:
                parts.append(trees[0].nodes)
                outputs.append(output)
        if any(part["is_categorical"].any() for part in parts):
            raise ValueError("categorical splits are not supported")
        sizes = [len(part) for part in parts]
        offsets = np.cumsum([0, *sizes])
        nodes = np.concatenate(parts)
        is_leaf = nodes["is_leaf"].astype(bool)
        shift = np.repeat(offsets[:-1], sizes)
        own = np.arange(len(nodes), dtype=np.int64)
        return cls(
            feature=np.where(is_leaf, 0, nodes["feature_idx"]).astype(np.int64),
            threshold=np.where(is_leaf, np.inf, nodes["num_threshold"]).astype(np.float64),
            left=np.where(is_leaf, own, nodes["left"].astype(np.int64) + shift),
            right=np.where(is_leaf, own, nodes["right"].astype(np.int64) + shift),
            value=np.where(is_leaf, nodes["value"], 0.0).astype(np.float64),
            missing_left=nodes["missing_go_to_left"].astype(bool),
            roots=offsets[:-1].astype(np.int64),
            tree_output=np.asarray(outputs, dtype=np.int64),
            baselines=np.array([float(np.ravel(e._baseline_prediction)[0]) for e in estimators]),
            depth=int(nodes["depth"].max()) if len(nodes) else 0,
        )

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Raw predictions (n, outputs) for rows of ``matrix`` (n, features)."""
        rows = np.asarray(matrix, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"expected a 2-d matrix, got shape {rows.shape}")
        if rows.shape[0] == 1:
            leaves = self._leaves_of_row(rows[0])[np.newaxis, :]
        else:
            leaves = np.concatenate(
                [self._leaves_of_rows(rows[start : start + 1024]) for start in range(0, len(rows), 1024)]
            )
        sums: np.ndarray = self.value[leaves] @ self.assignment + self.baselines
        return sums

    def _leaves_of_row(self, row: np.ndarray) -> np.ndarray:
        node = self.roots
        for _ in range(self.depth):
            values = row[self.feature[node]]
            go_left = values <= self.threshold[node]
            if np.isnan(values).any():
                go_left = np.where(np.isnan(values), self.missing_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def _leaves_of_rows(self, rows: np.ndarray) -> np.ndarray:
        node = np.broadcast_to(self.roots, (rows.shape[0], self.roots.size)).copy()
        row_index = np.arange(rows.shape[0])[:, np.newaxis]
        for _ in range(self.depth):
            values = rows[row_index, self.feature[node]]
            go_left = values <= self.threshold[node]
            missing = np.isnan(values)
            if missing.any():
                go_left = np.where(missing, self.missing_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in TREE_ARRAYS}
        arrays["missing_left"] = self.missing_left.astype(np.uint8)
        arrays["baselines"] = self.baselines
        arrays["depth"] = np.array([self.depth], dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TreeEnsemble:
        try:
            integers = {
                name: np.asarray(arrays[name], dtype=np.int64) for name in ("feature", "left", "right")
            }
            return cls(
                **integers,
                threshold=np.asarray(arrays["threshold"], dtype=np.float64),
                value=np.asarray(arrays["value"], dtype=np.float64),
                missing_left=np.asarray(arrays["missing_left"]).astype(bool),
                roots=np.asarray(arrays["roots"], dtype=np.int64),
                tree_output=np.asarray(arrays["tree_output"], dtype=np.int64),
                baselines=np.asarray(arrays["baselines"], dtype=np.float64),
                depth=int(np.asarray(arrays["depth"]).reshape(-1)[0]),
            )
        except KeyError as error:
            raise ValueError(f"tree arrays lack {error.args[0]!r}") from None


@dataclass(frozen=True, eq=False, slots=True)
class BoostedLengthModel:
    """Three boosted heads over a feature vector: the mean (squared error on tokens), p50 and p90
    (quantile loss on ``log(1 + tokens)``), evaluated together as one :class:`TreeEnsemble`."""

    kind: ClassVar[str] = "sklearn"
    trees: TreeEnsemble
    config: BoostingConfig

    def __post_init__(self) -> None:
        if self.trees.outputs != 3:
            raise ValueError(f"a length model has 3 outputs (mean, p50, p90), got {self.trees.outputs}")

    @classmethod
    def fit(
        cls,
        matrix: np.ndarray,
        lengths: np.ndarray,
        seed: int,
        config: BoostingConfig | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BoostedLengthModel:
        """Fit the three heads on ``matrix`` (n, d) and output lengths (n,), one thread each;
        ``progress(done, 3)`` after each head."""
        from sklearn.ensemble import HistGradientBoostingRegressor  # type: ignore[import-untyped]
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        config = config or BoostingConfig()
        lengths = np.asarray(lengths, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != lengths.shape[0] or matrix.shape[0] < 2:
            raise ValueError(f"need a (n ≥ 2, d) matrix and n lengths, got {matrix.shape}, {lengths.shape}")
        common = {**asdict(config), "early_stopping": False, "random_state": seed}
        regressor, log_lengths = HistGradientBoostingRegressor, np.log1p(lengths)
        heads = [
            (regressor(loss="squared_error", **common), lengths),
            (regressor(loss="quantile", quantile=0.5, **common), log_lengths),
            (regressor(loss="quantile", quantile=0.9, **common), log_lengths),
        ]
        # One thread: on a shared machine OpenMP's spinning threads slow the fit down many times over.
        with threadpool_limits(limits=1):
            for done, (estimator, target) in enumerate(heads, start=1):
                estimator.fit(matrix, target)
                if progress is not None:
                    progress(done, len(heads))
        return cls(TreeEnsemble.from_sklearn([estimator for estimator, _ in heads]), config)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """(n, 3): mean, p50, p90 in tokens (not yet capped by ``max_tokens``)."""
        raw = self.trees.predict(matrix)
        estimates = np.empty_like(raw)
        estimates[:, 0] = np.maximum(raw[:, 0], 0.0)
        estimates[:, 1:] = np.expm1(raw[:, 1:])
        return estimates

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"boosting": asdict(self.config)}, self.trees.to_arrays()

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> BoostedLengthModel:
        return cls(TreeEnsemble.from_arrays(arrays), BoostingConfig(**params["boosting"]))
