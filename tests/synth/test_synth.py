"""Synthesis without a real model: templates, parsers and validators on fixed strings, prompting
modes, dialogue turn-taking, math verification and CLI errors (one line, exit 2)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from personalm.errors import PersonalmError
from personalm.executors import ExecutorModel, get_executor
from personalm.models.base import Generation, Prompt, SamplingParams, TextModel, TokenScores
from personalm.synth import modes, parsers, run, tasks, verify
from personalm.synth.modes import Demo

TOOL = (
    'Sure! ```json\n{"name": "Show Ratings", "description": "Ratings of a TV show {live}.", '
    '"function_name": "get_show_ratings", "input_args": ["show_name"], "return": "rating", "depend": "TMDB API"}\n```'
)


def test_tool_spec_parses_with_all_keys_and_stringified_values():
    spec, flags = parsers.parse_tool(TOOL)
    assert flags == []
    assert spec["function_name"] == "get_show_ratings"
    assert spec["input_args"] == '["show_name"]'
    assert spec["description"] == "Ratings of a TV show {live}."


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("no json here", "no_json"),
        ('{"name": "x", "description": }', "bad_json"),
        ('{"name": "x", "description": "y"', "unclosed_json"),
        ('{"name": "x", "description": "y", "function_name": "f", "input_args": "a", "return": "r"}', "missing_key:depend"),
        ('{"name": "x", "description": "y", "function_name": "get data", "input_args": "a", "return": "r", "depend": "d"}', "bad_function_name"),
    ],
)  # fmt: skip
def test_tool_spec_flags(text, flag):
    assert flag in parsers.parse_tool(text)[1]


def test_tool_spec_serialized_as_json_string_like_the_released_file():
    released = json.dumps(json.dumps({k: "v" for k in parsers.TOOL_KEYS} | {"function_name": "get_v"}))
    assert parsers.parse_tool(released) == ({k: "v" for k in parsers.TOOL_KEYS} | {"function_name": "get_v"}, [])


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So 3 + 4 = 7.\nFinal answer: 7", "7"),
        ("Final answer: $1,200.00.", "1200"),
        ("The answer is \\boxed{\\frac{1}{2}} because...", "\\frac{1}{2}"),
        ("We get 6/8 of the pie. Final answer: 6/8", "3/4"),
        ("Total: 12 apples and then 15 pears remain", "15"),
        ("Final Answer: x = 2.50", "2.5"),
        ("The answer is Tuesday.", "tuesday"),
        ("no numbers at all", None),
    ],
)
def test_final_answer(text, answer):
    assert parsers.final_answer(text) == answer


def test_agreement_counts_only_parsed_answers():
    assert verify.agreement(["7", "7.0", "8"]) == ("7", 1) or verify.agreement(["7", "7", "8"]) == ("7", 2)
    assert verify.agreement(["7", "7", "8"]) == ("7", 2)
    assert verify.agreement([None, None, "3"]) == ("3", 1)
    assert verify.agreement([None, None]) == (None, 0)


@pytest.mark.parametrize(
    ("text", "finish", "flags"),
    [
        ("", "stop", ["empty"]),
        ("I'm sorry, but I can't help with creating that problem for you.", "stop", ["refusal"]),
        ("Too short.", "stop", ["too_short"]),
        ("A farmer has 12 cows and buys 5 more each week", "length", ["truncated"]),
        ("A farmer has 12 cows and buys 5 more each week.", "stop", []),
    ],
)
def test_generic_flags(text, finish, flags):
    assert parsers.generic_flags(text, finish) == flags


def test_templates_render_persona_and_constraints():
    math = tasks.get_task("math")
    text = math.instruction("A beekeeper in Vermont.", ("geometry", "olympiad level"))
    assert "A beekeeper in Vermont." in text and "Requirements: geometry; olympiad level." in text
    plain = math.instruction(None)
    assert "persona" not in plain.lower() and "Requirements" not in plain
    assert "spatial" in tasks.get_task("reasoning", kind="spatial").instruction("p")
    npc = tasks.get_task("npc", world="A floating city of glass.").instruction("A baker.")
    assert "A floating city of glass." in npc and "Name:" in npc
    for name in ("instruction", "knowledge", "tool"):
        assert "A baker." in tasks.get_task(name).instruction("A baker.")
    assert "A chess coach" in tasks.get_task("dialogue").instruction("A baker.", partner="A chess coach")


def test_custom_template_and_its_errors():
    custom = tasks.get_task(
        "custom", template="Write a haiku for {{ persona }}{% for c in constraints %}, {{ c }}{% endfor %}."
    )
    assert custom.instruction("a sailor", ("about rain",)) == "Write a haiku for a sailor, about rain."
    with pytest.raises(PersonalmError, match=r"t\.j2:2: template syntax error"):
        tasks.get_task("custom", template="ok\n{% if persona %}no end", template_source="t.j2")
    with pytest.raises(PersonalmError, match="'mood' is undefined"):
        tasks.get_task("custom", template="{{ mood }}").instruction("x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "poetry"}, "unknown task 'poetry'"),
        ({"name": "npc"}, "needs --world"),
        ({"name": "custom"}, "needs --template"),
        ({"name": "reasoning", "kind": "temporal"}, "expected one of logical, spatial"),
    ],
)
def test_task_errors(kwargs, message):
    with pytest.raises(PersonalmError, match=message):
        tasks.get_task(**kwargs)


def test_task_parsers():
    parsed, flags = tasks.get_task("npc", world="w").check(
        "**Name:** Mira\nRole: smuggler\nBackstory: grew up\n on docks", "stop"
    )
    assert parsed["name"] == "Mira" and parsed["role"] == "smuggler" and parsed["backstory"] == "grew up on docks"
    assert flags == []
    parsed, flags = tasks.get_task("reasoning").check(
        "Ann is taller than Bo; Bo than Cy. Who is shortest?\nAnswer: Cy", "stop"
    )
    assert parsed == {"problem": "Ann is taller than Bo; Bo than Cy. Who is shortest?", "answer": "Cy"} and not flags
    parsed, _ = tasks.get_task("instruction").check('Prompt: "Plan a week of meals for a diabetic dog."', "stop")
    assert parsed["prompt"] == "Plan a week of meals for a diabetic dog."
    parsed, _ = tasks.get_task("knowledge").check("# Why bees dance\nBees dance to share where food is.", "stop")
    assert parsed["title"] == "Why bees dance"


class ScriptModel(TextModel):
    """Answers from a function of the prompt; records every call."""

    model_id = "script"

    def __init__(self, answer=lambda prompt, i: f"Output number {i} for this prompt, long enough to pass the checks."):
        self.answer = answer
        self.calls: list[tuple[list[Prompt], SamplingParams]] = []

    def generate(self, prompts: Sequence[Prompt], params=None, progress=None) -> list[Generation]:
        self.calls.append((list(prompts), params))
        if progress:
            progress(len(prompts))
        return [Generation(self.answer(p, i), "stop", 5, 5) for i, p in enumerate(prompts)]

    def score(self, contexts, continuations) -> list[TokenScores]:
        raise NotImplementedError


PERSONAS = [{"id": "a", "persona": "A beekeeper."}, {"id": "b", "persona": "A chess coach."}]
DEMOS = [Demo("A hive holds 3 frames...", "An apiarist."), Demo("A board has 64 squares...", None)]


def test_modes_build_chats():
    math = tasks.get_task("math")
    zero = modes.chat(math, "zero-shot", "A beekeeper.", DEMOS)
    assert len(zero) == 1 and "A beekeeper." in zero[0]["content"]
    few = modes.chat(math, "few-shot", "A beekeeper.", DEMOS)
    assert [m["role"] for m in few] == ["user", "assistant", "user", "assistant", "user"]
    assert "An apiarist." not in few[0]["content"] and few[1]["content"] == DEMOS[0].text
    paired = modes.chat(math, "persona-few-shot", "A beekeeper.", DEMOS)
    assert "An apiarist." in paired[0]["content"] and paired[-1]["content"].endswith(few[-1]["content"][-20:])


def test_persona_few_shot_infers_missing_demo_personas():
    model = ScriptModel(lambda prompt, i: "Persona: A chess teacher who trains young players.")
    demos = modes.with_personas(DEMOS, model)
    assert demos[0] == DEMOS[0]
    assert demos[1].persona == "A chess teacher who trains young players." and demos[1].inferred
    assert "A board has 64 squares" in json.dumps(model.calls[0][0])


def test_read_demos_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"persona": "p"}\n')
    with pytest.raises(PersonalmError, match=r"d\.jsonl:2: expected column 'text'"):
        modes.read_demos(path)


def test_synthesize_rows_and_summary():
    model = ScriptModel()
    options = run.SynthOptions("few-shot", ("geometry",), max_tokens=32, seed=7)
    rows = run.synthesize(PERSONAS + [{"id": "plain", "persona": None}], tasks.get_task("math"), model, options, DEMOS)
    assert [r["id"] for r in rows] == ["a:math:few-shot", "b:math:few-shot", "plain:math:few-shot"]
    row = rows[0]
    assert row["seed"] == 7 and row["sampling"]["max_tokens"] == 32 and row["model_id"] == "script"
    assert row["constraints"] == ["geometry"] and row["valid"] and row["parsed"]["problem"]
    assert len(model.calls) == 1  # one batched call
    assert run.summary(rows)["valid_rate"] == 1.0
    with pytest.raises(PersonalmError, match="needs demonstrations"):
        run.synthesize(PERSONAS, tasks.get_task("math"), model, run.SynthOptions("few-shot"))


def test_synthesis_runs_on_an_executors_batch_function():
    """What `--engine ray` synthesizes with: an ExecutorModel over the executor's generate function."""
    script = ScriptModel()
    model = ExecutorModel(lambda batch, params: script.generate(batch, params), "script")
    done = []
    rows = run.synthesize(PERSONAS, tasks.get_task("instruction"), model, run.SynthOptions(), progress=done.append)
    assert [r["persona_id"] for r in rows] == ["a", "b"] and all(r["valid"] for r in rows) and sum(done) == 2
    assert model.generate([]) == [] and len(script.calls) == 1
    with pytest.raises(PersonalmError, match="use --engine local"):
        model.score([[{"role": "user", "content": "hi"}]], ["yes"])
    with pytest.raises(PersonalmError, match="unknown engine 'spark'; expected one of local, ray"):
        get_executor("spark")


def test_dialogue_alternates_speakers_in_batched_turns():
    model = ScriptModel(lambda prompt, i: "Ben: Hello there, how is the hive doing today?\n\nextra")
    rows = run.synthesize(PERSONAS, tasks.get_task("dialogue"), model, run.SynthOptions(turns=3))
    assert len(model.calls) == 3 and all(len(batch) == 2 for batch, _ in model.calls)
    assert [t["speaker"] for t in rows[0]["parsed"]["turns"]] == ["A", "B", "A"]
    assert rows[0]["parsed"]["turns"][0]["text"] == "Hello there, how is the hive doing today?"
    assert rows[0]["partner_id"] == "b" and rows[1]["partner_id"] == "a"
    second = model.calls[1][0][0]  # B's view: A's opening line is a user turn
    assert second[0]["role"] == "system" and "A chess coach." in second[0]["content"]
    assert [m["role"] for m in second[1:]] == ["user"]


def test_math_verification_keeps_problems_with_two_agreeing_answers():
    answers = {1: "Final answer: 12", 2: "so the answer is 12.0", 3: "Final answer: 13"}
    model = ScriptModel(lambda prompt, i: answers[model.calls[-1][1].seed] if "apples" in prompt[0]["content"] else "x")
    rows = [
        {"valid": True, "parsed": {"problem": "Ann has 5 apples and buys 7 more. How many?"}, "output": ""},
        {"valid": True, "parsed": {"problem": "Unsolvable riddle."}, "output": ""},
        {"valid": False, "parsed": {}, "output": ""},
    ]
    out = verify.verify(rows, model, verify.VerifyOptions(k=3, seed=0))
    assert [c[1].seed for c in model.calls] == [1, 2, 3]
    assert out[0]["verification"]["answers"] == ["12", "12", "13"]
    assert out[0]["verification"]["agreement"] == 2 and out[0]["verification"]["kept"]
    assert out[1]["verification"]["agreement"] == 0 and not out[1]["verification"]["kept"]
    assert out[2]["verification"]["answers"] == [] and not out[2]["verification"]["kept"]


def _cli_error(cli, *args: str) -> str:
    result = cli.invoke("synth", *args)
    assert result.returncode == 2
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_cli_errors(tmp_path, cli):
    personas = tmp_path / "p.jsonl"
    personas.write_text('{"persona": "A baker."}\n')
    no_column = tmp_path / "q.jsonl"
    no_column.write_text('{"name": "A baker."}\n')
    template = tmp_path / "bad.j2"
    template.write_text("Hello {{ persona \n")
    out = str(tmp_path / "o.jsonl")
    assert "unknown task 'poem'" in _cli_error(cli, "-p", str(personas), "-t", "poem", "-o", out)
    assert "bad.j2:1: template syntax error" in _cli_error(
        cli, "-p", str(personas), "-t", "custom", "--template", str(template), "-o", out
    )
    assert "q.jsonl:1: expected column 'persona'" in _cli_error(cli, "-p", str(no_column), "-t", "math", "-o", out)
    assert "unknown mode 'two-shot'" in _cli_error(
        cli, "-p", str(personas), "-t", "math", "--mode", "two-shot", "-o", out
    )
    assert "needs --demos" in _cli_error(cli, "-p", str(personas), "-t", "math", "--mode", "few-shot", "-o", out)
    assert "needs --personas" in _cli_error(cli, "-t", "math")
    assert not (tmp_path / "o.jsonl").exists()


class Interrupt(Exception):
    pass


def test_killed_run_resumes_without_lost_or_doubled_rows(tmp_path):
    from personalm.models.cache import CachedModel, GenerationCache

    personas = [{"id": f"p{i}", "persona": f"Persona number {i}."} for i in range(5)]
    inner = ScriptModel(lambda prompt, i: f"A problem about {prompt[-1]['content'][-20:]} with 3 apples.")
    task, options = tasks.get_task("math"), run.SynthOptions(temperature=0.8)
    expected = run.synthesize(personas, task, inner, options)

    class DiesAfterTwoChunks(ScriptModel):
        def generate(self, prompts, params=None, progress=None):
            if len(self.calls) == 2:
                raise Interrupt
            return super().generate(prompts, params, progress)

    cache = GenerationCache(tmp_path / "cache.sqlite")
    dying = DiesAfterTwoChunks(inner.answer)
    with pytest.raises(Interrupt):
        run.synthesize(personas, task, CachedModel(dying, cache, chunk_size=2), options)
    assert len(cache) == 4
    fresh = ScriptModel(inner.answer)
    rows = run.synthesize(personas, task, CachedModel(fresh, cache, chunk_size=2), options)
    assert [len(batch) for batch, _ in fresh.calls] == [1]  # only the unfinished persona is generated
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert [r["output"] for r in rows] == [r["output"] for r in expected]


def test_similarity_by_bin_and_diversity_report(tmp_path):
    import numpy as np

    from personalm.eval.diversity import similarity_by_bin
    from personalm.studies import synth_diversity as diversity
    from personalm.studies.harness import Study

    personas = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    outputs = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    bins = similarity_by_bin(personas, outputs)
    assert bins == [
        {"persona_cosine": "0.0-0.1", "pairs": 2, "mean_persona_cosine": 0.0, "mean_output_cosine": 0.4},
        {"persona_cosine": "0.9-1.0", "pairs": 1, "mean_persona_cosine": 1.0, "mean_output_cosine": 0.6},
    ]
    model = ScriptModel(
        lambda p, i: (
            "Same plain output every time, word for word."
            if "Persona" not in p[0]["content"]
            else p[0]["content"][-60:]
        )
    )
    persona_rows = [
        {"id": str(i), "persona": f"Persona {i} works as a {job}."}
        for i, job in enumerate(["baker", "pilot", "nurse", "poet"])
    ]
    with_rows, plain_rows = diversity.run_arms(persona_rows, tasks.get_task("instruction"), model, run.SynthOptions())
    assert len(with_rows) == len(plain_rows) == 4 and plain_rows[0]["persona"] is None

    def embed(texts):
        vectors = np.array([[len(set(t)), len(t) % 7 + 1, t.count("a") + 1] for t in texts], dtype=float)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    result = diversity.analyse(with_rows, plain_rows, embed)
    assert result["arms"]["plain"]["mean_pairwise_cosine"] == pytest.approx(1.0, abs=1e-3)
    assert result["personas_more_diverse"]
    assert result["similarity_gap"] == pytest.approx(
        result["arms"]["plain"]["mean_pairwise_cosine"] - result["arms"]["personas"]["mean_pairwise_cosine"], abs=1e-4
    )
    # a second "task" where the persona arm wrote the one plain output every time: the gap turns negative
    same_outputs = [w | {"output": p["output"]} for w, p in zip(with_rows, plain_rows, strict=True)]
    per_task = {"instruction": result, "math": diversity.analyse(same_outputs, with_rows, embed)}
    settings = {"n_per_arm": 4, "model_id": "script", "seed": 0}
    diversity.write_report(Study(tmp_path, {}), per_task, settings)
    assert all((tmp_path / name).is_file() for name in ("report.html", "similarity.png", "arms.png"))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["arms"]["plain"]["rows"] == 4  # the first task's, as the single-task layout had it
    for task in per_task:
        assert saved[f"similarity_gap_{task}_items"] == 4
        for key in ("similarity_gap", "mean_pairwise_cosine_personas", "mean_pairwise_cosine_plain"):
            low, high = saved[f"{key}_{task}_ci"]
            assert low <= saved[f"{key}_{task}"] <= high, (task, key)
    assert saved["similarity_gap_instruction"] > 0 > saved["similarity_gap_math"]
    assert set(saved["tasks"]) == {"instruction", "math"}
