"""Text measures on fixed strings: words, stop words, content-word stems, Flesch and ROUGE-L."""

from __future__ import annotations

import pytest

from personalm.eval import text


def test_words_keep_inner_apostrophes_and_letter_runs_split_them():
    assert text.words("Don't stop, it's 3 o'clock!") == ["Don't", "stop", "it's", "o'clock"]
    assert text.LETTERS.findall("dog's") == ["dog", "s"]
    assert {"the", "and", "yourselves"} <= text.STOPWORDS and "cookie" not in text.STOPWORDS


def test_content_words_drop_stop_words_and_match_by_stem():
    assert text.content_words("I have the two Dogs and a cookie!") == {"dog", "cooki"}
    assert text.content_stem("the") is None and text.content_stem("an") is None


def test_rouge_l():
    assert text.rouge_l("I bake cookies", "I bake cookies") == pytest.approx(1.0)
    assert text.rouge_l("rockets fly", "I bake cookies") == 0.0


def test_flesch_orders_plain_above_dense_text():
    plain = "The cat sat on the mat. It was a warm day. The cat was happy."
    dense = (
        "Notwithstanding considerable methodological heterogeneity, epidemiological investigations "
        "consistently demonstrate statistically significant associations."
    )
    assert text.flesch_reading_ease(plain) > 60 > text.flesch_reading_ease(dense)
    assert text.flesch_reading_ease("...") == float("-inf")
