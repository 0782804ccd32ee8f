"""The synthesis stage's `preference` task: its parse of a model's six lines."""

from __future__ import annotations

from personalm.synth.tasks import get_task

GOOD = """Preference: I can't stand horror movies.
Question: What should I watch on Friday night?
Good answer: A feel-good comedy like Paddington 2.
Bad answer 1: The Conjuring.
Bad answer 2: **Hereditary**, a horror classic.
Bad answer 3: A Halloween slasher marathon."""


def test_preference_task_parses_six_lines():
    task = get_task("preference")
    parsed, flags = task.check(GOOD, "stop")
    assert flags == []
    assert parsed["preference"] == "I can't stand horror movies."
    assert parsed["bad answer 3"] == "A Halloween slasher marathon."
    assert "persona" in task.instruction("A retired nurse who gardens.")


def test_preference_task_flags_missing_and_repeated_lines():
    task = get_task("preference")
    _, flags = task.check(GOOD.replace("Bad answer 3: A Halloween slasher marathon.", ""), "stop")
    assert "missing_key:bad answer 3" in flags
    _, flags = task.check(GOOD.replace("A Halloween slasher marathon.", "The Conjuring."), "stop")
    assert "repeated_answer" in flags
