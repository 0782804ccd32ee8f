"""Text measures every stage shares: word splitting, stop words, content-word stems, Flesch Reading
Ease and ROUGE-L.

Two word splitters, for two jobs:
* `WORD` counts words: letters with inner apostrophes ("don't" is one word), as Flesch and the
  judges' distinct-word count need;
* `LETTERS` finds runs of letters, so a content word is matched by its stem even inside "dog's".

Two stop lists, for two jobs:
* `STOPWORDS`: the short list of English function words, dropped from keyword queries (they match
  nearly every memory) and from the judges' informativeness count;
* content words (`content_stem`) use scikit-learn's longer English stop list, as the PerCE metrics
  were defined with it (persona words that survive it are the ones a reply can echo).
"""

from __future__ import annotations

import re
from functools import cache

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
LETTERS = re.compile(r"[A-Za-z]+")
_SENTENCE = re.compile(r"[.!?]+(?=\s|$)")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves""".split()
)


def words(text: str) -> list[str]:
    """The words of a text (letters with inner apostrophes), in order and case as written."""
    return WORD.findall(text)


@cache
def _hyphenator():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


def flesch_reading_ease(text: str) -> float:
    """206.835 - 1.015 words/sentence - 84.6 syllables/word, syllables from pyphen's hyphenation
    (textstat's own fallback; its current releases download NLTK's CMU dictionary at run time,
    which an offline machine cannot do). A text without words scores -inf."""
    found = words(text)
    if not found:
        return float("-inf")
    sentences = max(1, len(_SENTENCE.findall(text.strip())) or 1)
    hyphenator = _hyphenator()
    syllables = sum(len(hyphenator.positions(w.lower())) + 1 for w in found)
    return 206.835 - 1.015 * len(found) / sentences - 84.6 * syllables / len(found)


@cache
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@cache
def _content_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def content_stem(word: str) -> str | None:
    """The Porter stem of a content word, or None for stop words and words under 3 letters (so
    "cookies" in a reply matches "cookie" in a persona line)."""
    word = word.lower()
    if len(word) < 3 or word in _content_stop_words():
        return None
    return _stemmer().stem(word)


def content_words(text: str) -> set[str]:
    """The stems of a text's content words."""
    return {s for s in (content_stem(w) for w in LETTERS.findall(text)) if s}


@cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, Porter stemming)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)
