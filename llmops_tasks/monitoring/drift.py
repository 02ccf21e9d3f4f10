"""The statistical tests behind each drift signal, each from the library that implements it.

- a numeric distribution (prompt or answer length) against its reference: the two-sample
  Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``); the signal's value is the KS statistic D,
  the largest gap between the two empirical CDFs (0-1). The population stability index is
  reported beside it (not in scipy: ``numpy.histogram`` on the reference's deciles and the
  standard formula PSI = sum((a - e) * ln(a / e)), Siddiqi 2006, with empty bins floored at
  1e-4 as is customary);
- a rate (empty answers, refusals, PII, words never seen in training) against the reference's
  rate: Pearson's chi-square test of the 2x2 table (``scipy.stats.chi2_contingency``; Fisher's
  exact test, ``scipy.stats.fisher_exact``, when an expected count is below 5), one-sided: only
  a rise fires; the value is the rise (current rate - reference rate);
- a mix of categories (the prompts' scripts) against the reference's mix: the chi-square test
  of the 2 x k table, the value Cramer's V (``scipy.stats.contingency.association``, 0-1);
- a share against a fixed baseline (thumbs down): the exact binomial test
  (``scipy.stats.binomtest``, alternative "greater"); a mean rating against a baseline:
  Student's one-sample t-test (``scipy.stats.ttest_1samp``, alternative "less").

Every function returns ``(value, p_value, details)``; ``value`` is ``None`` when there is nothing
to compare (an empty side).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PSI_FLOOR = 1e-4


def psi(current, reference, bins: int = 10) -> float | None:
    """Population stability index of ``current`` against ``reference`` on the reference's quantile bins."""
    import numpy as np

    current, reference = np.asarray(current, dtype=float), np.asarray(reference, dtype=float)
    if not len(current) or not len(reference):
        return None
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: one bin each side of its value
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    expected = np.histogram(reference, edges)[0] / len(reference)
    actual = np.histogram(current, edges)[0] / len(current)
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def distribution(current, reference) -> tuple[float | None, float | None, dict[str, Any]]:
    """KS statistic D and its p-value; PSI and both medians as details."""
    import numpy as np
    from scipy import stats

    current, reference = np.asarray(current, dtype=float), np.asarray(reference, dtype=float)
    if not len(current) or not len(reference):
        return None, None, {"n": len(current), "n_reference": len(reference)}
    result = stats.ks_2samp(current, reference)
    return float(result.statistic), float(result.pvalue), {
        "test": "ks_2samp", "n": len(current), "n_reference": len(reference),
        "psi": psi(current, reference), "median": float(np.median(current)),
        "median_reference": float(np.median(reference)),
        "histogram": _shared_histogram(current, reference),
    }


def _shared_histogram(current, reference, bins: int = 20) -> dict[str, list[float]]:
    """Both samples' shares on the same bins (what the report draws side by side)."""
    import numpy as np

    top = float(np.percentile(np.concatenate([current, reference]), 99.5))
    low = float(min(current.min(), reference.min()))
    edges = np.linspace(low, max(top, low + 1), bins + 1)
    share = [np.histogram(np.clip(x, low, edges[-1]), edges)[0] / len(x) for x in (current, reference)]
    return {"edges": edges.round(3).tolist(), "current": share[0].round(5).tolist(),
            "reference": share[1].round(5).tolist()}


def rate_rise(k: int, n: int, k_ref: int, n_ref: int) -> tuple[float | None, float | None, dict[str, Any]]:
    """How far a rate rose above the reference's, and the one-sided p-value of that rise."""
    import numpy as np
    from scipy import stats

    details: dict[str, Any] = {"count": int(k), "n": int(n), "count_reference": int(k_ref), "n_reference": int(n_ref)}
    if not n or not n_ref:
        return None, None, details
    rate, rate_ref = k / n, k_ref / n_ref
    details.update(rate=rate, rate_reference=rate_ref)
    rise = rate - rate_ref
    if rise <= 0:
        return rise, 1.0, {**details, "test": "none (no rise)"}
    table = np.array([[k, n - k], [k_ref, n_ref - k_ref]])
    expected = stats.contingency.expected_freq(table)
    if (expected < 5).any():
        p = float(stats.fisher_exact(table, alternative="greater").pvalue)
        details["test"] = "fisher_exact"
    else:
        chi2, p_two, _, _ = stats.chi2_contingency(table)
        p = float(p_two) / 2  # one-sided: the rise was observed
        details.update(test="chi2_contingency", chi2=float(chi2))
    return rise, p, details


def mix(current: Mapping[str, int], reference: Mapping[str, int]) -> tuple[float | None, float | None, dict[str, Any]]:
    """Cramer's V of the 2 x k table of category counts, and the chi-square test's p-value."""
    import numpy as np
    from scipy import stats

    categories = sorted(set(current) | set(reference))
    n, n_ref = sum(current.values()), sum(reference.values())
    details: dict[str, Any] = {"n": n, "n_reference": n_ref,
                               "shares": {c: current.get(c, 0) / n for c in categories} if n else {},
                               "shares_reference": {c: reference.get(c, 0) / n_ref for c in categories} if n_ref else {}}
    if not n or not n_ref:
        return None, None, details
    if len(categories) < 2:
        return 0.0, 1.0, {**details, "test": "none (one category)"}
    table = np.array([[current.get(c, 0) for c in categories], [reference.get(c, 0) for c in categories]])
    chi2, p, _, _ = stats.chi2_contingency(table)
    v = float(stats.contingency.association(table, method="cramer"))
    return v, float(p), {**details, "test": "chi2_contingency", "chi2": float(chi2)}


def share_above(k: int, n: int, baseline: float) -> tuple[float | None, float | None, dict[str, Any]]:
    """A share and the exact binomial test of it being above ``baseline``."""
    from scipy import stats

    details: dict[str, Any] = {"count": int(k), "n": int(n), "baseline": baseline}
    if not n:
        return None, None, details
    p = float(stats.binomtest(int(k), int(n), baseline, alternative="greater").pvalue)
    return k / n, p, {**details, "test": "binomtest"}


def mean_below(values: Sequence[float], baseline: float) -> tuple[float | None, float | None, dict[str, Any]]:
    """A mean and the one-sample t-test of it being below ``baseline``."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    details: dict[str, Any] = {"n": len(values), "baseline": baseline}
    if not len(values):
        return None, None, details
    mean = float(values.mean())
    if len(values) < 2 or float(values.std()) == 0.0:
        return mean, (0.0 if mean < baseline else 1.0) if len(values) >= 2 else None, {**details, "test": "none"}
    p = float(stats.ttest_1samp(values, baseline, alternative="less").pvalue)
    return mean, (p if not math.isnan(p) else None), {**details, "test": "ttest_1samp"}
