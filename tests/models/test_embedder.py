import numpy as np
import pytest

from personalm.errors import PersonalmError
from personalm.models.embedder import Embedder


def test_embeddings_are_normalized_and_meaningful(embedder):
    vectors = embedder.embed(["a small cat", "a little kitten", "corporate tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_batches_give_the_same_vectors(embedder):
    texts = [f"sentence number {i}" for i in range(5)]
    small = Embedder(batch_size=2)
    assert np.allclose(small.embed(texts), embedder.embed(texts), atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(PersonalmError):
        Embedder(tmp_path)
