"""Dudík, Langford & Li (2011), "Doubly robust policy evaluation and learning", Section 5.1.

A multiclass data set becomes logged bandit feedback: the context is the image, the actions are
the 10 classes, the logging policy picks one uniformly at random (pscore = 0.1) and the reward is
1 when it names the true class. The target policy is a deterministic classifier trained on the
other half of the data; its true value is its accuracy on the evaluated half, known exactly. Over
500 repetitions of the logging we measure the bias and RMSE of DM, IPS, SNIPS and DR, with the
reward model cross-fitted on each repetition's logs. scikit-learn's bundled digits, no download.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from evaluation import ESTIMATORS, EventStats, cross_fit_q_hat, terms_from_stats

N_REPETITIONS = 500
N_CLASSES = 10


@pytest.mark.slow
def test_dudik_langford_li_protocol_on_digits() -> None:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: len(y) // 2], order[len(y) // 2 :]
    with threadpool_limits(limits=1):
        classifier = LogisticRegression(max_iter=5000).fit(x[train], y[train])
    x_eval, y_eval = x[test], y[test]
    n = len(y_eval)
    prediction = classifier.predict(x_eval)
    target = np.zeros((n, N_CLASSES))
    target[np.arange(n), prediction] = 1.0
    truth = float(np.mean(prediction == y_eval))

    names = ["dm", "ips", "snips", "dr"]
    estimates = np.empty((N_REPETITIONS, len(names)))
    rng = np.random.default_rng(2011)
    with threadpool_limits(limits=1):  # 500 small fits: BLAS threads only add overhead
        for rep in range(N_REPETITIONS):
            estimates[rep] = _one_repetition(rng, rep, x_eval, y_eval, target, names)
    assert set(names) <= set(ESTIMATORS)

    error = estimates - truth
    bias = error.mean(axis=0)
    rmse = np.sqrt(np.mean(error**2, axis=0))
    sd = estimates.std(axis=0, ddof=1)
    print(f"\ndigits: n={n}, target accuracy (true value) {truth:.4f}, {N_REPETITIONS} repetitions")
    print(f"{'estimator':>9} {'bias':>9} {'rmse':>8}")
    for name, b, r in zip(names, bias, rmse, strict=True):
        print(f"{name:>9} {b:+9.4f} {r:8.4f}")

    ips_i, dr_i = names.index("ips"), names.index("dr")
    # IPS is unbiased: its mean error is within 4 standard errors (of the mean over the
    # repetitions) of 0, while DM's bias is many times that.
    assert abs(bias[ips_i]) <= 4 * sd[ips_i] / np.sqrt(N_REPETITIONS)
    # DR is more accurate than IPS.
    assert rmse[dr_i] < rmse[ips_i]


def _one_repetition(
    rng: np.random.Generator,
    rep: int,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    target: np.ndarray,
    names: list[str],
) -> list[float]:
    """Log the evaluation half once with uniform actions; return the estimates of ``names``."""
    n = len(y_eval)
    action = rng.integers(0, N_CLASSES, size=n)
    reward = (action == y_eval).astype(np.float64)
    q_hat = cross_fit_q_hat(
        reward=reward, action=action, n_actions=N_CLASSES, context=x_eval, l2=3.0, seed=rep
    )
    stats = EventStats.from_arrays(
        reward=reward,
        action=action,
        pscore=np.full(n, 1.0 / N_CLASSES),
        action_dist=target,
        q_hat=q_hat,
    )
    return [float(terms_from_stats(name, stats).mean()) for name in names]
