"""`personalm critic train`: train the preference critic, choose every setting on validation topics,
report multiple-choice accuracy on test topics it never saw.

PrefEval's topics are split (critic.data.split_topics): the critic trains on the train topics,
every choice (design, loss, epochs, whether synthetic items help, how several preferences combine)
is made on the validation topics, and the test topics are touched once, by the chosen critic, at
the end. Designs measured on validation:

* floors, zero-shot: MiniLM cosine of preference and answer; the embedded LM's likelihood of the
  answer after the stated preference (eval.prefeval's stated pass); the LM's own verdict (P("yes")
  to "does the answer respect what the user said?");
* lm-lora: a LoRA yes/no verdict on the embedded SmolLM2-135M, trained with personalm.train.loop
  (CE on the verdict token) on the same items;
* cross-encoder: critic.model's MiniLM cross-encoder (BCE, so its probabilities are calibrated),
  per learning rate, each validated after every epoch (the best epoch is kept); then, from the best
  one, one more epoch on train-topic items against one more epoch on as many items half of which are
  synthetic (persona-driven, made by the synthesis stage's `preference` task, few-shot from
  train-topic items): they are kept only if validation says they help.

Multiple choice: the four options shuffled, the critic's top one right when it is the respecting
option (chance 0.25). Several preferences: each validation item's preference among distractor
preferences of other topics; the combination rule with the best accuracy is kept. Intervals are 95%
bootstrap intervals over the items. Every unit (synthetic rows, each design, each evaluation) is
cached under out/.cache, so a killed run re-run continues.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personalm import report
from personalm.critic.data import (
    CriticItem,
    check_no_leak,
    in_topics,
    prefeval_items,
    split_topics,
    synthetic_items,
    with_distractors,
)
from personalm.critic.evaluate import choice_correct, cosine_scorer
from personalm.critic.model import COMBINE, PreferenceCritic, default_critic_dir
from personalm.critic.train import FitConfig, fit
from personalm.eval.bootstrap import bootstrap_mean
from personalm.models.registry import DEFAULT_MODEL
from personalm.studies.harness import Study

Log = Callable[[str], None]
PACKAGES = ("personalm", "torch", "transformers", "peft", "sentence-transformers")
PERSONAS_FILE = Path("personahub") / "tool_personas.jsonl"
MODEL_FOLDER = "model"


@dataclass
class CriticStudyConfig:
    data: str
    out: str
    artifact: str | None = None  # where the chosen critic is installed (default: PERSONALM_HOME/critic)
    seed: int = 0
    quick: bool = False
    loss: str = "bce"  # calibrated probabilities, as `score` promises (critic.train has listwise too)
    lrs: tuple[float, ...] = (2e-5,)
    epochs: int = 3
    batch_items: int = 8
    synthetic: int = 96  # personas that each write one synthetic item (0: none)
    synth_tokens: int = 160
    synthetic_cap: int = 32  # synthetic items in the continued epoch that measures whether they help
    lm_steps: int = 16  # LoRA steps of the lm-lora design (batch 8); 0 skips it
    lm_floors: bool = True
    lm_items: int = 48  # validation items the LM arms are scored on (a pass over all costs minutes here)
    distractors: int = 3  # other preferences stated beside the item's own (combination rule)
    quick_items: int = 4  # per topic, with --quick
    model: str = DEFAULT_MODEL

    def effective(self) -> CriticStudyConfig:
        """--quick: a few items per topic, one loss, one epoch, no synthetic items, no LM arms."""
        if not self.quick:
            return self
        return CriticStudyConfig(
            **(asdict(self) | {"lrs": self.lrs[:1], "epochs": 1, "synthetic": 0, "lm_steps": 0, "lm_floors": False})
        )


def rate(correct: np.ndarray, seed: int) -> dict[str, Any]:
    """Accuracy and its 95% bootstrap interval over the items."""
    ci = bootstrap_mean(correct, seed=seed)
    return {"accuracy": round(float(correct.mean()), 4), "ci": [round(ci.low, 4), round(ci.high, 4)], "n": ci.n}


def run(config: CriticStudyConfig, log: Log = print, progress=None) -> dict[str, Any]:
    config = config.effective()
    study = Study(config.out, config, packages=PACKAGES)
    data = Path(config.data)
    items = prefeval_items(data)
    topics = split_topics(sorted({i.topic for i in items}), config.seed)
    split = {name: in_topics(items, names) for name, names in topics.items()}
    if config.quick:
        split = {name: _per_topic(rows, config.quick_items) for name, rows in split.items()}
    log("critic: topics " + "; ".join(f"{k} {', '.join(v)} ({len(split[k])} items)" for k, v in topics.items()))
    check_no_leak(split["train"], topics, [i.preference for i in split["validation"] + split["test"]])
    base = _fingerprint(config, "seed", "quick", "quick_items", "model")

    designs: dict[str, dict[str, Any]] = {}
    designs["cosine"] = study.unit(f"floor-{base}/cosine", lambda: _cosine(split, config.seed))
    trained: dict[str, PreferenceCritic] = {}
    for lr in config.lrs:
        name = _arm_name(lr, False)
        designs[name], trained[name] = _cross_encoder(config, study, split, topics, lr, [], log, progress)

    synthetic: list[CriticItem] = []
    synth_summary: dict[str, Any] = {"requested": config.synthetic}
    if config.synthetic:
        synth_key = f"synthetic-{_fingerprint(config, 'seed', 'synthetic', 'synth_tokens', 'model')}"
        rows = study.unit(f"{synth_key}/rows", lambda: _synthesize(config, data, split["train"], study, log))
        synthetic, dropped = synthetic_items(rows)
        check_no_leak(synthetic, topics, [i.preference for i in split["validation"] + split["test"]])
        synth_summary |= {"rows": len(rows), "kept": len(synthetic), "dropped": dropped}
        report.write_json(study.out / "synthetic_items.json", {"items": [i.to_dict() for i in synthetic]})
        log(f"critic: {len(synthetic)} synthetic items kept of {len(rows)} generated ({dropped})")
    if synthetic:
        best_lr = max(config.lrs, key=lambda lr: designs[_arm_name(lr, False)]["validation"]["accuracy"])
        base_name = _arm_name(best_lr, False)
        count = min(len(synthetic), config.synthetic_cap)
        rng = random.Random(config.seed)
        extra = rng.sample(synthetic, count)
        plain = rng.sample(split["train"], min(2 * count, len(split["train"])))
        for label, items in (("train only", plain), ("+synthetic", extra + plain[:count])):
            name = f"{base_name}, 1 more epoch ({label})"
            designs[name], trained[name] = _continued(
                config, study, split, topics, trained[base_name], designs[base_name], best_lr, items, name, log
            )

    lm_validation = _sample(split["validation"], config.lm_items, config.seed)
    lm_base = _fingerprint(config, "seed", "quick", "quick_items", "model", "lm_items")
    if config.lm_floors:
        designs |= study.unit(f"floor-{lm_base}/lm", lambda: _lm_floors(config, lm_validation, log))
    if config.lm_steps:
        lm_key = f"lm-lora-{_fingerprint(config, 'seed', 'quick', 'quick_items', 'model', 'lm_items', 'lm_steps')}"
        designs["lm-lora"] = study.unit(
            f"{lm_key}/result", lambda: _lm_lora(config, study, lm_key, split["train"], lm_validation, log)
        )
    chosen = max(trained, key=lambda n: designs[n]["validation"]["accuracy"])
    critic = trained[chosen]
    log(f"critic: chosen design {chosen} (validation {designs[chosen]['validation']['accuracy']:.3f})")

    pool_validation = [i.preference for i in split["train"] + split["validation"]]
    several = with_distractors(split["validation"], pool_validation, config.distractors, config.seed + 1)
    combine = {}
    for rule in COMBINE:
        critic.meta["settings"]["combine"] = rule
        combine[rule] = rate(choice_correct(critic.score, split["validation"], config.seed, several), config.seed)
    rule = max(COMBINE, key=lambda r: combine[r]["accuracy"])
    critic.meta["settings"]["combine"] = rule
    shown = ", ".join(f"{r} {v['accuracy']:.3f}" for r, v in combine.items())
    log(f"critic: combination rule {rule} ({shown})")

    test_correct = choice_correct(critic.score, split["test"], config.seed)
    pool_test = [i.preference for i in split["train"] + split["test"]]
    several_test = with_distractors(split["test"], pool_test, config.distractors, config.seed + 2)
    test = {
        "single": rate(test_correct, config.seed),
        "with_distractors": rate(choice_correct(critic.score, split["test"], config.seed, several_test), config.seed),
        "cosine": designs["cosine"]["test"],
    }
    log(f"critic: test accuracy {test['single']['accuracy']:.3f} {test['single']['ci']} on {test['single']['n']} items")

    critic.meta |= {
        "topics": topics,
        "base": critic.meta.get("base"),
        "settings": critic.meta["settings"] | designs[chosen]["settings"] | {"combine": rule, "design": chosen},
        "validation": {"accuracy": designs[chosen]["validation"]["accuracy"], "combine": combine},
        "test": test["single"],
        "items": {k: len(v) for k, v in split.items()} | {"synthetic": len(synthetic) if "synthetic" in chosen else 0},
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _install(critic, study.out / MODEL_FOLDER)
    artifact = Path(config.artifact) if config.artifact else default_critic_dir()
    _install(critic, artifact)
    load_seconds = _load_seconds(artifact)
    log(f"critic: saved to {artifact} (loads in {load_seconds:.2f} s)")

    results = {
        "topics": topics,
        "items": {k: len(v) for k, v in split.items()},
        "designs": designs,
        "chosen": chosen,
        "combine": {"rules": combine, "chosen": rule, "distractors": config.distractors},
        "synthetic": synth_summary | _synthetic_verdict(designs),
        "test_accuracy": test["single"]["accuracy"],
        "test_accuracy_ci": test["single"]["ci"],
        "test_items": test["single"]["n"],
        "test": test,
        "artifact": str(artifact),
        "load_seconds": round(load_seconds, 3),
        "quick": config.quick,
    }
    parts = _page(study, results)
    return study.finish(results, "Preference critic", parts, shown=("topics", "items", "chosen", "synthetic"))


def _sample(items: list[CriticItem], count: int, seed: int) -> list[CriticItem]:
    """`count` items drawn with `seed` (over every topic of the split), in their file order."""
    keep = set(random.Random(seed).sample(range(len(items)), min(count, len(items))))
    return [item for k, item in enumerate(items) if k in keep]


def _synthetic_verdict(designs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether the synthetic items helped: the continued epoch with them against the one without."""
    with_synth = [d for n, d in designs.items() if n.endswith("(+synthetic)")]
    without = [d for n, d in designs.items() if n.endswith("(train only)")]
    if not with_synth or not without:
        return {"helps": None}
    gain = with_synth[0]["validation"]["accuracy"] - without[0]["validation"]["accuracy"]
    return {"helps": gain > 0, "validation_gain": round(gain, 4)}


def _per_topic(items: list[CriticItem], count: int) -> list[CriticItem]:
    kept: dict[str, list[CriticItem]] = {}
    for item in items:
        kept.setdefault(item.topic, [])
        if len(kept[item.topic]) < count:
            kept[item.topic].append(item)
    return [i for rows in kept.values() for i in rows]


def _fingerprint(config: CriticStudyConfig, *fields: str, **extra: Any) -> str:
    """A unit's cache key: a hash of the settings its work depends on (and the data folder), so a
    run with other settings for that unit never reuses it, and one that changes others does."""
    keys = {name: getattr(config, name) for name in fields} | extra | {"data": str(Path(config.data).resolve())}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _arm_name(lr: float, with_synthetic: bool) -> str:
    return f"cross-encoder lr {lr:g}" + (" +synthetic" if with_synthetic else "")


def _cosine(split: dict[str, list[CriticItem]], seed: int) -> dict[str, Any]:
    from personalm.models.embedder import Embedder

    embedder = Embedder()
    score = cosine_scorer(embedder.embed)
    return {
        "kind": "floor (zero-shot)",
        "validation": rate(choice_correct(score, split["validation"], seed), seed),
        "test": rate(choice_correct(score, split["test"], seed), seed),
    }


def verdict_chat(preference: str, question: str, answer: str) -> list[dict[str, str]]:
    """The LM's yes/no question about one (preference, question, answer)."""
    text = (
        f'The user said: "{preference}"\nLater the user asked: "{question}"\nCandidate answer: "{answer}"\n'
        "Does the candidate answer respect what the user said? Reply yes or no."
    )
    return [{"role": "user", "content": text}]


def _verdict_scorer(model) -> Callable[[Sequence[str], str, Sequence[str]], np.ndarray]:
    """log P("yes") of the LM's verdict, min over preferences. One scoring pass, not two: "yes" and
    "no" would need a pass each (model.score scores one continuation), and on this CPU a pass over
    the validation answers costs minutes; for ranking the answers, P(yes) alone is enough."""

    def score(preferences: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
        chats = [verdict_chat(p, question, a) for p in preferences for a in answers]
        yes = np.array([s.total for s in model.score(chats, ["yes"] * len(chats))])
        return yes.reshape(len(preferences), len(answers)).min(axis=0)

    return score


def _likelihood_scorer(model) -> Callable[[Sequence[str], str, Sequence[str]], np.ndarray]:
    """Mean token log P(answer | preferences stated, question): eval.prefeval's stated pass."""
    from personalm.eval.prefeval import Passes, Question

    def score(preferences: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
        return Passes(model, [Question(question, list(answers), list(preferences))])("stated", True).mean[0]

    return score


def _lm_floors(config: CriticStudyConfig, validation: list[CriticItem], log: Log) -> dict[str, Any]:
    from personalm.models.registry import load_model

    log(f"critic: zero-shot LM floors on {len(validation)} validation items")
    with load_model(config.model) as model:
        likelihood = choice_correct(_likelihood_scorer(model), validation, config.seed)
        verdict = choice_correct(_verdict_scorer(model), validation, config.seed)
    return {
        "lm-likelihood": {"kind": "floor (zero-shot)", "validation": rate(likelihood, config.seed)},
        "lm-verdict": {"kind": "floor (zero-shot)", "validation": rate(verdict, config.seed)},
    }


def _lm_lora(
    config: CriticStudyConfig,
    study: Study,
    key: str,
    train_items: list[CriticItem],
    validation: list[CriticItem],
    log: Log,
) -> dict[str, Any]:
    """A LoRA yes/no verdict on the embedded LM, trained by personalm.train.loop (CE on the verdict)."""
    from personalm.models.registry import load_model
    from personalm.tables import write_rows
    from personalm.train.loop import TrainConfig, train

    folder = study.cache(key)
    rows = [
        {
            "messages": [
                *verdict_chat(i.preference, i.question, a),
                {"role": "assistant", "content": "yes" if k == 0 else "no"},
            ]
        }
        for i in train_items
        for k, a in enumerate(i.answers)
    ]
    random.Random(config.seed).shuffle(rows)
    write_rows(folder / "verdicts.jsonl", rows)
    settings = TrainConfig(
        data=str(folder / "verdicts.jsonl"), out=str(folder / "adapter"), model=config.model, epochs=1,
        max_steps=config.lm_steps, batch_size=8, lr=2e-4, max_len=256, save_every=10, seed=config.seed,
    )  # fmt: skip
    log(f"critic: lm-lora, {config.lm_steps} LoRA steps of 8 verdicts ({len(rows)} verdicts in all)")
    result = train(settings, log=log)
    with load_model(config.model, adapter=folder / "adapter") as model:
        correct = choice_correct(_verdict_scorer(model), validation, config.seed)
    return {
        "kind": "LoRA on the embedded LM (personalm.train.loop)",
        "settings": {"steps": result.steps, "batch_size": 8, "lr": 2e-4, "rank": settings.rank},
        "train_seconds": round(result.seconds, 1),
        "validation": rate(correct, config.seed),
    }


def preference_demos(items: Sequence[CriticItem], count: int, seed: int):
    """Few-shot demonstrations for the synthesis stage's `preference` task, from train-topic items."""
    from personalm.synth.modes import Demo

    chosen = random.Random(seed).sample(list(items), min(count, len(items)))
    return [
        Demo(
            f"Preference: {i.preference}\nQuestion: {i.question}\nGood answer: {i.answers[0]}\n"
            + "\n".join(f"Bad answer {k}: {a}" for k, a in enumerate(i.answers[1:4], start=1))
        )
        for i in chosen
    ]


def _synthesize(
    config: CriticStudyConfig, data: Path, train_items: list[CriticItem], study: Study, log: Log
) -> list[dict[str, Any]]:
    """One item per persona from the synthesis stage (task `preference`, few-shot), parsed and flagged."""
    from personalm.models.registry import load_model
    from personalm.synth.run import SynthOptions, summary, synthesize
    from personalm.synth.tasks import get_task
    from personalm.tables import read_rows

    path = data / PERSONAS_FILE
    personas = [
        {"id": str(line), "persona": row["persona"]}
        for line, row in read_rows(path)
        if isinstance(row.get("persona"), str) and row["persona"].strip()
    ][: config.synthetic]
    log(f"critic: synthesizing {len(personas)} items from personas ({path})")
    options = SynthOptions(mode="few-shot", max_tokens=config.synth_tokens, temperature=0.7, seed=config.seed)
    with load_model(config.model, cache=study.cache("generations") / "cache.sqlite") as model:
        rows = synthesize(
            personas, get_task("preference"), model, options, preference_demos(train_items, 2, config.seed)
        )
    log(f"critic: synthesis {summary(rows)}")
    return [
        {
            "persona": r["persona"],
            "output": r["output"],
            "parsed": r["parsed"],
            "valid": r["valid"],
            "flags": r["flags"],
        }
        for r in rows
    ]


def _cross_encoder(
    config: CriticStudyConfig,
    study: Study,
    split: dict[str, list[CriticItem]],
    topics: dict[str, list[str]],
    lr: float,
    synthetic: list[CriticItem],
    log: Log,
    progress,
) -> tuple[dict[str, Any], PreferenceCritic]:
    """Fine-tune one cross-encoder arm (validated after each epoch, best epoch kept)."""
    name = _arm_name(lr, bool(synthetic))
    key = _fingerprint(
        config, "seed", "quick", "quick_items", "loss", "epochs", "batch_items", lr=lr,
        synthetic=[i.to_dict() for i in synthetic],
    )  # fmt: skip
    folder = study.cache(f"arm-{key}")
    done = folder / "result.json"
    fit_config = FitConfig(
        loss=config.loss, epochs=config.epochs, lr=lr, batch_items=config.batch_items, seed=config.seed
    )
    if done.is_file():
        return json.loads(done.read_text()), PreferenceCritic.load(folder / "best")
    items = split["train"] + synthetic
    check_no_leak(items, topics)
    log(f"critic: training {name} on {len(items)} items, {config.epochs} epoch(s)")
    critic = PreferenceCritic.initial(seed=config.seed)
    critic, fitted = fit(
        critic,
        items,
        fit_config,
        lambda c: float(choice_correct(c.score, split["validation"], config.seed).mean()),
        folder,
        progress,
        log,
    )
    validation = rate(choice_correct(critic.score, split["validation"], config.seed), config.seed)
    result = {
        "kind": "MiniLM cross-encoder (critic.train)",
        "settings": {
            "loss": config.loss, "lr": lr, "epochs": fitted.best_epoch, "epochs_run": config.epochs,
            "batch_items": config.batch_items, "synthetic": bool(synthetic), "train_items": len(items),
        },
        "curve": fitted.curve,
        "losses": fitted.losses,
        "train_seconds": round(fitted.seconds, 1),
        "validation": validation,
    }  # fmt: skip
    report.write_json(done, result)
    (folder / "state.pt").unlink(missing_ok=True)  # the best epoch is kept; the optimizer state is not needed
    return result, critic


def _continued(
    config: CriticStudyConfig,
    study: Study,
    split: dict[str, list[CriticItem]],
    topics: dict[str, list[str]],
    base: PreferenceCritic,
    base_result: dict[str, Any],
    lr: float,
    items: list[CriticItem],
    name: str,
    log: Log,
) -> tuple[dict[str, Any], PreferenceCritic]:
    """One more epoch from the best critic of an arm, on `items`: with the same number of items,
    half synthetic against all train-topic, it says whether the synthetic items help (a full arm
    per choice costs too much CPU here)."""
    key = _fingerprint(
        config, "seed", "loss", "batch_items", lr=lr, base=base_result, items=[i.to_dict() for i in items]
    )
    folder = study.cache(f"continued-{key}")
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text()), PreferenceCritic.load(folder / "best")
    check_no_leak(items, topics)
    log(f"critic: {name}: {len(items)} items")
    start = study.cache(f"continued-{key}", "start")
    base.save(start)
    critic, fitted = fit(
        PreferenceCritic.load(start),
        items,
        FitConfig(loss=config.loss, epochs=1, lr=lr, batch_items=config.batch_items, seed=config.seed),
        lambda c: float(choice_correct(c.score, split["validation"], config.seed).mean()),
        folder,
        None,
        log,
    )
    result = {
        "kind": "MiniLM cross-encoder, continued (critic.train)",
        "settings": base_result["settings"]
        | {"continued_items": len(items), "synthetic": any(i.source == "synthetic" for i in items)},
        "curve": fitted.curve,
        "train_seconds": round(fitted.seconds, 1),
        "validation": rate(choice_correct(critic.score, split["validation"], config.seed), config.seed),
    }
    report.write_json(done, result)
    (folder / "state.pt").unlink(missing_ok=True)
    shutil.rmtree(start, ignore_errors=True)
    return result, critic


def _install(critic: PreferenceCritic, path: Path) -> None:
    """Save the critic at `path`, replacing what was there, through a temp folder (never half written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    critic.save(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _load_seconds(path: Path, repeats: int = 3) -> float:
    """Best of a few loads of the saved artifact (imports already done, as in a running server)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        PreferenceCritic.load(path)
        best = min(best, time.perf_counter() - start)
    return best


def _page(study: Study, results: dict[str, Any]) -> list[str]:
    designs = results["designs"]
    names = list(designs)
    fig, (left, right) = report.figure(ncols=2, width=11)
    accuracy = [designs[n]["validation"]["accuracy"] for n in names]
    errors = np.array(
        [
            [a - designs[n]["validation"]["ci"][0], designs[n]["validation"]["ci"][1] - a]
            for n, a in zip(names, accuracy, strict=True)
        ]
    ).T
    colors = ["#4c72b0" if n == results["chosen"] else "#999999" for n in names]
    left.barh(names, accuracy, xerr=errors, color=colors)
    left.axvline(0.25, color="red", linestyle="--", linewidth=1, label="chance")
    left.set_xlabel("validation accuracy (4 options)")
    left.set_xlim(0, 1)
    left.legend()
    left.set_title("Designs on validation topics")
    for n in names:
        if designs[n].get("curve"):
            right.plot(range(1, len(designs[n]["curve"]) + 1), designs[n]["curve"], marker="o", label=n)
    right.axhline(0.25, color="red", linestyle="--", linewidth=1)
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    right.set_title("Cross-encoder training")
    right.legend(fontsize=8)
    png = study.save(fig, "critic.png")
    rows = [
        {"design": n, "kind": d.get("kind", ""), "validation": d["validation"]["accuracy"],
         "95% CI": str(d["validation"]["ci"]), "n": d["validation"]["n"], "settings": json.dumps(d.get("settings", {}))}
        for n, d in designs.items()
    ]  # fmt: skip
    test = results["test"]
    test_rows = [
        {"condition": k, "accuracy": v["accuracy"], "95% CI": str(v["ci"]), "n": v["n"]} for k, v in test.items()
    ]
    combine_rows = [{"rule": r, **v} for r, v in results["combine"]["rules"].items()]
    return [
        report.paragraph(
            f"Chosen on validation topics: {results['chosen']}, combination rule {results['combine']['chosen']}. "
            f"Test topics ({', '.join(results['topics']['test'])}), never trained or validated on: accuracy "
            f"{results['test_accuracy']:.3f}, 95% CI {results['test_accuracy_ci']}, {results['test_items']} items "
            "(chance 0.25). The artifact loads in "
            f"{results['load_seconds']} s."
        ),
        report.section("Designs (validation topics)", report.image(png), report.table(rows)),
        report.section(
            "Several preferences (validation, the item's own among distractors)", report.table(combine_rows)
        ),
        report.section("Test topics", report.table(test_rows)),
        report.section("Synthetic items", report.paragraph(json.dumps(results["synthetic"]))),
    ]
