"""DPO in our trainer: the loss by hand, completion-only labels, pair validation, a real run that
separates chosen from rejected, and an interrupted run that resumes to the same adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from personalm.errors import PersonalmError
from personalm.soups.dpo import DPOSettings, train_adapter
from personalm.train.data import IGNORE, collate, load_pairs, read_pairs
from personalm.train.loop import TrainConfig, train
from personalm.train.losses import dpo_sigmoid, get_loss, loss_units, sequence_logprobs, supervised_rows

QUESTIONS = ["Why is the sky blue?", "What is DNA?", "How do bees make honey?", "What is gravity?"]


def _write_pairs(path: Path, count: int = 8) -> Path:
    """Plain answers chosen over jargon, under an 'explain simply' system prompt."""
    with open(path, "w") as handle:
        for i in range(count):
            q = QUESTIONS[i % len(QUESTIONS)]
            row = {
                "prompt": [{"role": "system", "content": "Explain simply."}, {"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": f"In easy words: {q[:-1].lower()} is simple."}],
                "rejected": [
                    {"role": "assistant", "content": "Notwithstanding epistemic caveats, it is multifactorial."}
                ],
            }
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    return embedded_model.tokenizer


def test_dpo_loss_matches_a_hand_computation():
    policy_c, policy_r = torch.tensor([-10.0, -7.0]), torch.tensor([-12.0, -4.0])
    ref_c, ref_r = torch.tensor([-11.0, -7.5]), torch.tensor([-11.5, -5.0])
    losses, chosen, rejected = dpo_sigmoid(policy_c, policy_r, ref_c, ref_r, beta=0.1)
    # pair 0: chosen reward 0.1·(−10+11) = 0.1, rejected 0.1·(−12+11.5) = −0.05, margin 0.15
    # pair 1: chosen 0.1·(−7+7.5) = 0.05, rejected 0.1·(−4+5) = 0.1, margin −0.05
    # loss = −log σ(margin) = log(1 + e^−margin)
    expected = [math.log(1 + math.exp(-0.15)), math.log(1 + math.exp(0.05))]
    torch.testing.assert_close(losses, torch.tensor(expected))
    torch.testing.assert_close(chosen, torch.tensor([0.1, 0.05]))
    torch.testing.assert_close(rejected, torch.tensor([-0.05, 0.1]))


def test_sequence_logprobs_sum_each_sequences_tokens():
    rows = torch.randn(3, 5)
    targets, sequence = torch.tensor([2, 1, 4]), torch.tensor([0, 0, 1])
    logp = rows.log_softmax(-1)
    by_hand = torch.stack([logp[0, 2] + logp[1, 1], logp[2, 4]])
    torch.testing.assert_close(sequence_logprobs(rows, targets, sequence, 2), by_hand)


def test_dpo_loss_is_built_with_its_own_options_and_checks_beta():
    assert get_loss("dpo", beta=0.3, clip_min=0.5).beta == 0.3
    with pytest.raises(PersonalmError, match="--beta"):
        get_loss("dpo", beta=0.0)


def test_pairs_supervise_only_the_completion_and_share_one_row(tmp_path, tokenizer):
    dataset = load_pairs(_write_pairs(tmp_path / "p.jsonl", 2), tokenizer, 128)
    example = dataset.examples[0]
    kept = [t for t in example.labels if t != IGNORE]
    assert tokenizer.decode(kept) == "In easy words: why is the sky blue is simple.<|im_end|>\n"
    rejected = [t for t in example.rejected_labels if t != IGNORE]
    assert tokenizer.decode(rejected).startswith("Notwithstanding")
    shared = len(example.labels) - len(kept)
    assert example.input_ids[:shared] == example.rejected_ids[:shared]  # the same prompt
    batch = collate(dataset.examples, 0)
    assert batch["input_ids"].shape[0] == 2 and loss_units(batch) == 2  # one row per pair
    assert batch["input_ids"][0, : len(example.input_ids)].tolist() == example.input_ids
    end = len(example.input_ids) + len(example.rejected_ids) - shared
    assert batch["input_ids"][0, len(example.input_ids) : end].tolist() == example.rejected_ids[shared:]
    assert batch["position_ids"][0, len(example.input_ids)].item() == shared  # the rejected answer follows the prompt


def test_overlong_pairs_truncate_drop_or_fail_on_their_longer_side(tmp_path, tokenizer):
    path = _write_pairs(tmp_path / "p.jsonl", 2)
    with open(path, "a") as handle:
        long = {"prompt": [{"role": "user", "content": "Why?"}], "chosen": [{"role": "assistant", "content": "Ok."}],
                "rejected": [{"role": "assistant", "content": "word " * 200}]}  # fmt: skip
        handle.write(json.dumps(long) + "\n")
    truncated = load_pairs(path, tokenizer, 64, "truncate")
    assert truncated.truncated == 1 and truncated.dropped == 0 and len(truncated.examples) == 3
    assert max(len(truncated.examples[-1].input_ids), len(truncated.examples[-1].rejected_ids)) == 64
    dropped = load_pairs(path, tokenizer, 64, "drop")
    assert dropped.dropped == 1 and len(dropped.examples) == 2
    with pytest.raises(PersonalmError, match=r"p.jsonl:3: pair has a \d+-token side, over --max-len 64"):
        load_pairs(path, tokenizer, 64, "error")


def test_a_pair_row_scores_each_answer_as_its_own_chat(tmp_path, tokenizer):
    """The shared-prompt row (4D mask, restarted positions) gives the log-probs of separate forwards."""
    from personalm.perce.contrast import token_logprobs
    from personalm.train.data import pad
    from personalm.train.loop import build_model

    _, model = build_model(TrainConfig(data="", out="", rank=4, alpha=8, dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a non-zero adapter, so the LoRA path counts too
            torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(0))
    examples = load_pairs(_write_pairs(tmp_path / "p.jsonl", 3), tokenizer, 128).examples
    with torch.no_grad():
        batch = collate(examples, 0)
        packed = sequence_logprobs(*supervised_rows(model, batch), batch["target_sequence"], 6)
        sides = [(e.input_ids, e.labels) for e in examples] + [(e.rejected_ids, e.rejected_labels) for e in examples]
        separate = pad(sides, 0)
        logits = model(input_ids=separate["input_ids"], attention_mask=separate["attention_mask"]).logits
        tokens = token_logprobs(logits, separate["labels"])
        owner = (separate["labels"][:, 1:] != IGNORE).nonzero()[:, 0]
        expected = torch.zeros(6).index_add(0, owner, tokens)
    torch.testing.assert_close(packed, expected, atol=2e-4, rtol=1e-5)
    assert int(batch["tokens"]) < int(separate["attention_mask"].sum())


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}]},
         "'rejected'"),
        ({"prompt": "hi", "chosen": [], "rejected": []}, "'prompt'"),
        ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "user", "content": "a"}],
          "rejected": [{"role": "assistant", "content": "b"}]}, "assistant messages"),
        ({"prompt": [{"role": "bot", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
          "rejected": [{"role": "assistant", "content": "b"}]}, "expected system, user or assistant"),
        ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": " "}],
          "rejected": [{"role": "assistant", "content": "b"}]}, "empty assistant"),
    ],
)  # fmt: skip
def test_bad_pairs_name_their_line(tmp_path, row, needle):
    path = _write_pairs(tmp_path / "p.jsonl", 2)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    with pytest.raises(PersonalmError) as err:
        read_pairs(path)
    assert needle in str(err.value) and ":3:" in str(err.value)


def test_soups_training_refuses_bad_input_before_loading_a_model(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PersonalmError, match="every pair a tie"):
        train_adapter(empty, tmp_path / "a", DPOSettings(), log=lambda _: None)
    with pytest.raises(PersonalmError, match="--trainer x: expected one of ours, trl"):
        DPOSettings(trainer="x")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": [], "chosen": "yes", "rejected": []}\n')
    with pytest.raises(PersonalmError, match="broken.jsonl:1:"):
        train_adapter(broken, tmp_path / "c", DPOSettings(), log=lambda _: None)


def _config(data: Path, out: Path, **extra) -> TrainConfig:
    settings = dict(rank=4, alpha=8, dropout=0.0, lr=5e-4, max_steps=4, batch_size=4, max_len=64, loss="dpo",
                    save_every=2, seed=1) | extra  # fmt: skip
    return TrainConfig(data=str(data), out=str(out), **settings)


@pytest.mark.slow
def test_a_short_dpo_run_separates_chosen_from_rejected(tmp_path):
    from personalm.studies.bench.dpo import score_adapter

    data = _write_pairs(tmp_path / "p.jsonl", 8)
    result = train(_config(data, tmp_path / "a"), log=lambda _: None)
    margins = [s["reward_margin"] for s in result.stats]
    assert margins[0] == 0.0 and result.losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert margins[-1] > margins[1] > 0 and result.losses[-1] < result.losses[0]
    scored = score_adapter(tmp_path / "a", data, DPOSettings(max_length=64, batch_size=4))
    assert scored["reward_accuracy"] == 1.0 and scored["loss"] < math.log(2) and scored["reward_margin"] > 0
    log = [json.loads(line) for line in open(tmp_path / "a" / "train_log.jsonl")]
    assert len(log) == 4 and {"loss", "reward_accuracy", "reward_margin"} <= set(log[-1])


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_dpo_run_resumes_to_the_same_adapter(tmp_path):
    """Stopped after step 3 (its last checkpoint is step 2), then run again: the reference log-probs
    are recomputed, the rest comes from the checkpoint, and the adapter matches an unbroken run."""
    data = _write_pairs(tmp_path / "p.jsonl", 8)
    train(_config(data, tmp_path / "whole"), log=lambda _: None)

    def stop_at_three(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(_config(data, tmp_path / "cut"), stop_at_three, log=lambda _: None)
    assert not (tmp_path / "cut" / "adapter_config.json").exists()
    resumed = train(_config(data, tmp_path / "cut"), log=lambda _: None)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_soups_train_with_our_trainer_writes_a_kept_adapter(tmp_path):
    data = _write_pairs(tmp_path / "p.jsonl", 4)
    settings = DPOSettings(rank=4, alpha=8, max_steps=1, batch_size=2, max_length=64, threads=1)
    summary = train_adapter(data, tmp_path / "pole", settings, log=lambda _: None)
    assert summary["trainer"] == "ours" and summary["steps"] == 1 and summary["pairs"] == 4
    assert (tmp_path / "pole" / "adapter_config.json").is_file() and not (tmp_path / "pole" / "checkpoints").exists()
    messages = []
    assert train_adapter(data, tmp_path / "pole", settings, log=messages.append) == summary
    assert messages == [f"{tmp_path / 'pole'}: already trained, kept"]


@pytest.mark.slow
def test_bench_dpo_runs_both_trainers_on_the_same_pairs(tmp_path, cli):
    args = ["bench", "dpo", "--steps", "2", "--batch-size", "2", "--max-length", "96", "--threads", "1", "--json"]
    summary = cli.json(*args, cwd=tmp_path)
    assert {"ours_pairs_s", "trl_pairs_s", "speedup", "ours_reward_accuracy", "trl_reward_accuracy"} <= set(summary)
    assert summary["ours_pairs_s"] > 0 and summary["trl_pairs_s"] > 0 and summary["pairs"] == 4
    assert summary["speedup"] == pytest.approx(summary["ours_pairs_s"] / summary["trl_pairs_s"], rel=0.02)


@pytest.mark.slow
def test_a_run_that_continues_an_adapter_keeps_it_as_the_dpo_reference(tmp_path):
    """Round 1 of tone preference training: DPO from the SFT adapter, against the SFT adapter. At
    the first step policy == reference (loss log 2) only with reference="start"; a run stopped after
    step 3 resumes with the reference it began with and ends where an unbroken run ends."""
    data = _write_pairs(tmp_path / "p.jsonl", 8)
    start = tmp_path / "sft"
    train(_config(data, start, max_steps=2, lr=5e-3), log=lambda _: None)
    continued = train(_config(data, tmp_path / "whole", init_adapter=str(start), reference="start"),
                      log=lambda _: None)  # fmt: skip
    against_base = train(_config(data, tmp_path / "base-ref", init_adapter=str(start)), log=lambda _: None)
    assert continued.losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert against_base.losses[0] < math.log(2) - 1e-3  # the SFT adapter already prefers the chosen answers

    def stop_at_three(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise _Interrupted

    cut = _config(data, tmp_path / "cut", init_adapter=str(start), reference="start")
    with pytest.raises(_Interrupted):
        train(cut, stop_at_three, log=lambda _: None)
    assert train(cut, log=lambda _: None).resumed_from == 2
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    with pytest.raises(PersonalmError, match="adapter rank 4 but this run trains rank 8"):
        train(_config(data, tmp_path / "r8", init_adapter=str(start), rank=8), log=lambda _: None)
