"""score_answers: the tone bar and the meaning check every tone stage applies, in one place."""

from __future__ import annotations

import numpy as np
import pytest

from personalm.eval.tone import FleschScorer, score_answers


def test_each_answer_is_scored_against_its_own_reference(word_hash_embedder):
    embedder = word_hash_embedder()
    references = ["The cat sat on the mat.", "Interest rates rose sharply in the third quarter."]
    texts = ["The cat sat on the mat.", "A dog ran far away.",  # two answers to the first reference
             "Interest rates rose sharply.", "The cat sat on the mat."]  # fmt: skip
    scores = score_answers(texts, references, embedder, FleschScorer(), per_reference=2)
    alone = np.sum(embedder.embed(texts) * embedder.embed([references[0]] * 2 + [references[1]] * 2), axis=1)
    assert np.allclose(scores.semsim, alone) and scores.semsim[0] == pytest.approx(1.0, abs=1e-6)
    assert scores.semsim[2] > scores.semsim[3]  # the last answer matches the other reference, not its own
    assert list(scores.accepted) == list(FleschScorer().accepts(texts))
    assert np.allclose(scores.tone, FleschScorer().score(texts))
    with pytest.raises(ValueError, match="3 texts for 2 references x 2"):
        score_answers(texts[:3], references, embedder, FleschScorer(), per_reference=2)
