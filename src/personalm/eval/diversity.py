"""How diverse a set of texts is: mean pairwise cosine, distinct-n and the Vendi score, and how
output similarity follows persona similarity.

* mean pairwise cosine of sentence embeddings (lower = more diverse), over all pairs of a seeded
  sample of at most `PAIR_SAMPLE` rows;
* distinct-n: distinct word n-grams / all word n-grams (higher = more diverse), words split as the
  persona dedup splits them (personas.tokens.words: lower case, whitespace, punctuation trimmed);
* Vendi score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of K/n, K the
  cosine-similarity matrix; the "effective number" of distinct items (1 ... n). Computed from the
  d x d matrix X^T X / n, which has the same non-zero eigenvalues, so it uses every row;
* similarity by bin: over all pairs of personas, binned by their cosine, the mean cosine of the two
  outputs they produced (the Persona Hub paper's figure: do similar personas give similar outputs?);
* the cosine gap between two sets (plain minus with personas) and its 95% bootstrap interval. The
  mean pairwise cosine is a statistic of pairs, not a mean of one value per row, so each resample
  draws the rows again and recomputes it over the pairs of distinct drawn rows (a row drawn twice is
  not a pair with itself); the two sets are resampled independently (their rows are not paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from personalm.eval.bootstrap import RESAMPLES, Interval
from personalm.personas.tokens import words

PAIR_SAMPLE = 4000
BINS = np.round(np.arange(0.0, 1.01, 0.1), 2)


def _pair_sample(vectors: np.ndarray, seed: int) -> np.ndarray:
    """At most PAIR_SAMPLE rows, a seeded sample when there are more."""
    n = len(vectors)
    if n <= PAIR_SAMPLE:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(n, PAIR_SAMPLE, replace=False))]


def mean_pairwise_cosine(vectors: np.ndarray, seed: int = 0) -> float:
    n = len(vectors)
    if n < 2:
        return float("nan")
    vectors = _pair_sample(vectors, seed)
    n = len(vectors)
    gram = vectors @ vectors.T
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def resampled_pairwise_cosine(
    vectors: np.ndarray, resamples: int, rng: np.random.Generator, seed: int = 0
) -> np.ndarray:
    """The mean pairwise cosine of `resamples` bootstrap resamples of the rows (of the same sample
    `mean_pairwise_cosine` uses), each over the pairs of distinct drawn rows: with c the draw counts
    and G the cosine matrix, (cᵀGc − Σ c_i² G_ii) / (n² − Σ c_i²). NaN for a resample of one row."""
    vectors = _pair_sample(vectors, seed)
    n = len(vectors)
    gram = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    diagonal = np.diag(gram)
    out = np.empty(resamples)
    block = max(1, (1 << 22) // (n * n))
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=rows).astype(np.float64)
        total = np.einsum("ri,ij,rj->r", counts, gram, counts) - (counts**2) @ diagonal
        pairs = n * n - (counts**2).sum(axis=1)
        out[start : start + rows] = np.where(pairs > 0, total / np.where(pairs > 0, pairs, 1), np.nan)
    return out


def cosine_gap(
    plain: np.ndarray, personas: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Mean pairwise cosine of each set with its interval, and the gap plain − personas (> 0: the
    persona outputs are more diverse) with its interval and the share of resamples above zero."""
    if len(plain) < 2 or len(personas) < 2:
        raise ValueError("a cosine gap needs at least two rows in each set")
    rng = np.random.default_rng(seed)
    draws = {"plain": resampled_pairwise_cosine(plain, resamples, rng, seed),
             "personas": resampled_pairwise_cosine(personas, resamples, rng, seed)}  # fmt: skip
    point = {"plain": mean_pairwise_cosine(plain, seed), "personas": mean_pairwise_cosine(personas, seed)}
    tail = (1 - level) / 2

    def interval(mean: float, values: np.ndarray, n: int) -> Interval:
        low, high = np.nanquantile(values, [tail, 1 - tail])
        return Interval(mean, float(low), float(high), n, level, resamples, seed)

    gap = draws["plain"] - draws["personas"]
    return {
        "plain": interval(point["plain"], draws["plain"], len(plain)),
        "personas": interval(point["personas"], draws["personas"], len(personas)),
        "gap": interval(point["plain"] - point["personas"], gap, min(len(plain), len(personas))),
        "gap_share_above_zero": float(np.mean(gap[np.isfinite(gap)] > 0)),
    }


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = words(text)
        grams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else float("nan")


def vendi_score(vectors: np.ndarray) -> float:
    n = len(vectors)
    if n == 0:
        return float("nan")
    x = vectors.astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(x.T @ x / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def measure(texts: Sequence[str], vectors: np.ndarray, seed: int = 0) -> dict[str, float]:
    """All metrics of one set (vectors: unit-norm embeddings of the texts, in order)."""
    return {
        "rows": len(texts),
        "mean_pairwise_cosine": round(mean_pairwise_cosine(vectors, seed), 4),
        "distinct_1": round(distinct_n(texts, 1), 4),
        "distinct_2": round(distinct_n(texts, 2), 4),
        "distinct_3": round(distinct_n(texts, 3), 4),
        "vendi": round(vendi_score(vectors), 2),
    }


def similarity_by_bin(persona_vectors: np.ndarray, output_vectors: np.ndarray) -> list[dict[str, Any]]:
    """Over all persona pairs: per persona-cosine bin, the pair count and mean output cosine."""
    n = len(persona_vectors)
    upper = np.triu_indices(n, k=1)
    persona_sim = (persona_vectors @ persona_vectors.T)[upper]
    output_sim = (output_vectors @ output_vectors.T)[upper]
    rows = []
    for low, high in zip(BINS[:-1], BINS[1:], strict=True):
        inside = (persona_sim >= low) & ((persona_sim < high) if high < 1 else (persona_sim <= high))
        if inside.any():
            rows.append(
                {
                    "persona_cosine": f"{low:.1f}-{high:.1f}",
                    "pairs": int(inside.sum()),
                    "mean_persona_cosine": round(float(persona_sim[inside].mean()), 4),
                    "mean_output_cosine": round(float(output_sim[inside].mean()), 4),
                }
            )
    return rows
