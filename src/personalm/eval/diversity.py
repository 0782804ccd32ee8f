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
  outputs they produced (the Persona Hub paper's figure: do similar personas give similar outputs?).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from personalm.personas.tokens import words

PAIR_SAMPLE = 4000
BINS = np.round(np.arange(0.0, 1.01, 0.1), 2)


def mean_pairwise_cosine(vectors: np.ndarray, seed: int = 0) -> float:
    n = len(vectors)
    if n < 2:
        return float("nan")
    if n > PAIR_SAMPLE:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(n, PAIR_SAMPLE, replace=False))]
        n = PAIR_SAMPLE
    gram = vectors @ vectors.T
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


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
