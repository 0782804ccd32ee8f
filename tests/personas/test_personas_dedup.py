"""Persona dedup: MinHash stage on fixed strings, the embedding stage on planted vectors, the CLI."""

from __future__ import annotations

import json
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from personalm.personas import embedding_stage, minhash_stage
from personalm.personas.greedy import greedy_from_edges
from personalm.personas.tokens import PUNCTUATION, token_sets, words


def stage1(texts: list[str], threshold: float = 0.9):
    return minhash_stage.dedup(minhash_stage.features(texts), threshold)


def test_words_are_lowercased_and_trimmed():
    assert words("A Nurse, who loves “e-commerce” — (Café) 42!") == [
        "a",
        "nurse",
        "who",
        "loves",
        "e-commerce",
        "café",
        "42",
    ]
    assert token_sets(["a a a", "", "!!!"]).sizes.tolist() == [1, 0, 0]


def test_short_texts_are_judged_on_their_true_overlap():
    texts = ["A nurse.", "a NURSE", "A nurse who", "a doctor", "nurse a"]
    d = stage1(texts)
    assert d.keep.tolist() == [True, False, True, True, False]
    assert d.duplicate_of.tolist()[1] == 0 and d.similarity[1] == 1.0
    # "a nurse who" vs "a nurse": Jaccard 2/3 -> not a duplicate at 0.9, but it is at 0.6
    assert stage1(texts, 0.6).keep.tolist()[2] is False


def test_near_duplicates_at_the_threshold():
    base = "a retired teacher who loves gardening birds and long walks by the sea"  # 13 words
    one_more = base + " daily"  # Jaccard 13/14 = 0.929
    two_more = base + " daily too"  # Jaccard 13/15 = 0.867
    d = stage1([base, one_more, two_more])
    assert d.keep.tolist() == [True, False, True]
    assert d.similarity[1] == pytest.approx(13 / 14)


def test_wordless_rows_compare_by_exact_text():
    d = stage1(["!!!", "???", "!!!", "a chef"])
    assert d.keep.tolist() == [True, True, False, True]
    assert d.duplicate_of[2] == 0


def test_dropped_rows_point_at_kept_rows_only():
    # 1 ~ 0 and 2 ~ 1, but 2 is not similar enough to 0: 2 stays (no chains through dropped rows)
    d = greedy_from_edges(3, np.array([0, 1]), np.array([1, 2]), np.array([0.95, 0.95], np.float32))
    assert d.keep.tolist() == [True, False, True]
    # the most similar kept row wins
    d = greedy_from_edges(3, np.array([0, 1]), np.array([2, 2]), np.array([0.91, 0.97], np.float32))
    assert d.duplicate_of.tolist() == [-1, -1, 1]


def test_band_shape_keeps_pairs_at_the_threshold():
    bands, rows = minhash_stage.band_shape(0.9)
    assert bands * rows <= 128
    assert 1 - (1 - 0.9**rows) ** bands >= 0.999


def test_exact_jaccard_matches_python_sets():
    texts = ["a b c d", "a b c e", "x y", "a b c d e f g h"]
    feats = minhash_stage.features(texts)
    left, right = np.array([0, 0, 1, 2]), np.array([1, 3, 3, 3])
    got = minhash_stage.jaccard(feats.tokens, left, right)
    sets = [set(t.split()) for t in texts]
    want = [len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in zip(left, right, strict=True)]
    assert got.tolist() == pytest.approx(want)


def test_signature_agreement_estimates_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(400)]
    a = rng.choice(vocab, 60, replace=False).tolist()
    b = a[:45] + rng.choice(vocab[200:], 15, replace=False).tolist()
    sigs = minhash_stage.features([" ".join(a), " ".join(b)]).signatures
    true = len(set(a) & set(b)) / len(set(a) | set(b))
    assert abs((sigs[0] == sigs[1]).mean() - true) < 0.12


def planted_vectors(n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    copies = np.arange(1, n, 7)
    vectors[copies] = vectors[copies - 1] + 0.05 * rng.standard_normal((len(copies), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, copies


def exact_greedy(vectors: np.ndarray, threshold: float) -> np.ndarray:
    keep: list[int] = []
    out = np.ones(len(vectors), bool)
    for j, v in enumerate(vectors):
        if keep and (vectors[keep] @ v).max() >= threshold:
            out[j] = False
        else:
            keep.append(j)
    return out


@pytest.mark.parametrize("exact_limit", [10**9, 100])
def test_embedding_stage_matches_exact_greedy(monkeypatch, exact_limit):
    monkeypatch.setattr(embedding_stage, "EXACT_LIMIT", exact_limit)
    vectors, copies = planted_vectors(3000)
    d = embedding_stage.dedup(vectors, 0.9, block=256)
    assert not d.keep[copies].any()
    assert (d.keep == exact_greedy(vectors, 0.9)).mean() > 0.995
    dropped = d.dropped
    assert (np.einsum("ij,ij->i", vectors[dropped], vectors[d.duplicate_of[dropped]]) >= 0.9).all()
    assert d.keep[d.duplicate_of[dropped]].all()


def test_lower_embedding_threshold_drops_more():
    vectors, _ = planted_vectors(500, dim=8)
    assert (~embedding_stage.dedup(vectors, 0.5).keep).sum() > (~embedding_stage.dedup(vectors, 0.9).keep).sum()
    with pytest.raises(ValueError):
        embedding_stage.dedup(vectors, 0.3)


def test_cli_dedup_writes_kept_rows_and_sidecar(tmp_path: Path, cli):
    source = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "persona": "A retired nurse who volunteers at a hospice."},
        {"id": "b", "persona": "a retired NURSE who volunteers at a hospice"},
        {"id": "c", "persona": "A software engineer who builds compilers."},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = astuple(
        cli.invoke("personas", "dedup", str(source), "-o", str(tmp_path / "out.parquet"), "--no-embedding")
    )
    assert code == 0, err
    assert [r["id"] for r in pq.read_table(tmp_path / "out.parquet").to_pylist()] == ["a", "c"]
    dropped = pq.read_table(tmp_path / "out.dropped.parquet").to_pylist()
    assert dropped == [rows[1] | {"duplicate_of": "a", "stage": "minhash", "similarity": 1.0}]
    assert json.loads(out)["kept_rows"] == 2


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("missing.jsonl", b'{"id": 1, "text": "x"}\n', "missing.jsonl:1: expected column 'persona'"),
        ("empty.jsonl", b"", "empty.jsonl: no personas found"),
        ("latin1.jsonl", '{"persona": "caf\u00e9"}\n'.encode("latin-1"), "latin1.jsonl:1: not UTF-8"),
        ("corrupt.parquet", b"PAR1 not really parquet", "corrupt.parquet: not a readable Parquet file"),
        ("dup.jsonl", b'{"id": 1, "persona": "a"}\n{"id": 1, "persona": "b"}\n', "dup.jsonl:2: duplicate id"),
    ],
)
def test_cli_dedup_bad_input_is_one_line_exit_2(tmp_path: Path, cli, name, content, expected):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    code, _, err = astuple(cli.invoke("personas", "dedup", str(source), "-o", str(out), "--no-embedding"))
    assert code == 2
    assert err.strip().count("\n") == 0 and expected in err
    assert out.read_text() == "old\n"


def test_word_sets_match_python_sets_on_a_large_mixed_corpus():
    # thousands of distinct words (the vocabulary table grows several times), Unicode rows next to
    # ASCII ones (two tokenizers, one hash), punctuation to trim, repeated words, empty rows, and
    # each row followed by a copy with its last word replaced (pairs that share most words)
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(6000)] + ["café", "naïve", "Ünïcode", "e-commerce", "O'Brien"]
    texts = []
    for i in range(3000):
        picked = rng.choice(vocab, int(rng.integers(0, 25))).tolist()
        decorated = [rng.choice(["", "(", "“"]) + w + rng.choice(["", ",", ".", "!”"]) for w in picked]
        text = ("\t" if i % 7 == 0 else " ").join(w.upper() if i % 5 == 0 else w for w in decorated)
        texts += [text, text.rsplit(" ", 1)[0] + " extra"]
    sets = [{w.strip(PUNCTUATION) for w in t.lower().split()} - {""} for t in texts]
    tokens = token_sets(texts)
    assert tokens.sizes.tolist() == [len(s) for s in sets]
    left = np.concatenate([rng.integers(0, len(texts), 2000), np.arange(0, len(texts), 2)])
    right = np.concatenate([rng.integers(0, len(texts), 2000), np.arange(1, len(texts), 2)])

    def python_jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b) if a | b else 1.0

    want = [python_jaccard(sets[i], sets[j]) for i, j in zip(left, right, strict=True)]
    assert minhash_stage.jaccard(tokens, left, right).tolist() == pytest.approx(want)
