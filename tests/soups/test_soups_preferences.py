"""Preference dimensions: defaults, user files, and one-line errors for bad files."""

from __future__ import annotations

import pytest

from personalm.errors import PersonalmError
from personalm.soups.preferences import Preferences, combination_name


def test_defaults_are_the_papers_three_dimensions():
    prefs = Preferences.default()
    assert prefs.names == ["expertise", "informativeness", "style"]
    assert len(prefs.combinations()) == 8
    assert "elementary school" in prefs.pole("expertise.elementary").prompt
    combo = prefs.combinations()[0]
    assert combination_name(combo) == "expertise.elementary+informativeness.concise+style.friendly"
    assert prefs.combined_prompt(combo).count("Generate a response") == 3


def test_user_file_adds_a_dimension(tmp_path):
    path = tmp_path / "prefs.yaml"
    path.write_text(
        "dimensions:\n  - name: length\n    poles:\n      short: Answer in one sentence.\n      long: Answer at length.\n"
    )
    prefs = Preferences.load(path)
    assert prefs.names[-1] == "length"
    assert prefs.pole("length.short").prompt == "Answer in one sentence."
    assert Preferences.load(path, extend=False).names == ["length"]


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("dimensions: [", ".yaml", r"prefs.yaml:\d+: invalid YAML"),
        ('{"dimensions": [}', ".json", r"prefs.json:1: invalid JSON"),
        ("name: x", ".yaml", "expected a top-level 'dimensions' list"),
        ("dimensions:\n  - name: tone\n    poles:\n      warm: Be warm.\n", ".yaml", "needs at least two poles"),
        ("dimensions:\n  - name: Tone!\n    poles: {a: x, b: y}\n", ".yaml", "must be lower-case"),
        ("dimensions:\n  - name: tone\n    poles: {a: '', b: y}\n", ".yaml", "non-empty preference prompt"),
        ("dimensions:\n  - poles: {a: x, b: y}\n", ".yaml", r"dimensions\[0\] needs 'name' and 'poles'"),
    ],
)
def test_bad_preference_files_fail_with_one_line(tmp_path, text, suffix, message):
    path = tmp_path / f"prefs{suffix}"
    path.write_text(text)
    with pytest.raises(PersonalmError, match=message) as err:
        Preferences.load(path)
    assert "\n" not in str(err.value)


def test_unknown_pole_names_the_known_ones():
    with pytest.raises(PersonalmError, match="known: expertise.elementary"):
        Preferences.default().pole("expertise.toddler")
