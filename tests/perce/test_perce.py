"""PerContrast (PIR on the real model, the no-persona rendering) and the PerCE loss math."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from personalm.errors import PersonalmError
from personalm.perce.contrast import PerContrast, tokenize_contrast, without_persona
from personalm.perce.loss import PerCELoss, perce_weights
from personalm.train.data import IGNORE, collate, load_examples, with_persona
from personalm.train.losses import contrast_of, cross_entropy, get_loss, selected, supervised_logits

PERSONA = "I have a cat named Whiskers. Knitting is my passion."
CHAT = [
    {"role": "user", "content": "What do you do in the evenings?"},
    {"role": "assistant", "content": "I sit by the fire knitting while my cat Whiskers sleeps on my lap."},
]


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    return embedded_model.tokenizer


def test_persona_goes_into_the_system_message_and_the_bare_chat_keeps_only_its_own():
    chat = [{"role": "system", "content": "Be brief."}, *CHAT]
    assert with_persona(chat, PERSONA)[0] == {"role": "system", "content": f"Be brief.\n\nYour persona:\n{PERSONA}"}
    assert without_persona(chat)[0] == {"role": "system", "content": "Be brief."}
    assert with_persona(CHAT, PERSONA)[0]["content"] == f"Your persona:\n{PERSONA}"
    assert without_persona(CHAT)[0] == {"role": "system", "content": ""}
    assert with_persona(CHAT, PERSONA)[1:] == without_persona(CHAT)[1:] == CHAT


def test_the_no_persona_rendering_drops_the_persona_and_nothing_else(tokenizer):
    ids, labels, bare_ids, bare_labels = tokenize_contrast(tokenizer, CHAT, PERSONA)
    with_text, bare_text = tokenizer.decode(ids), tokenizer.decode(bare_ids)
    assert "Whiskers. Knitting is my passion" in with_text
    assert "Knitting" not in bare_text and "Your persona" not in bare_text
    assert with_text.replace(f"Your persona:\n{PERSONA}", "") == bare_text
    assert [t for t in labels if t != IGNORE] == [t for t in bare_labels if t != IGNORE]
    assert tokenizer.decode([t for t in labels if t != IGNORE]).startswith("I sit by the fire")


def test_truncated_examples_keep_the_bare_rendering_aligned(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    long_reply = "Whiskers and I knit scarves every evening. " * 6
    rows = [{"persona": PERSONA, "messages": [CHAT[0], {"role": "assistant", "content": long_reply}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_examples(path, tokenizer, 60, contrast=tokenize_contrast)
    example = dataset.examples[0]
    assert dataset.truncated == 1 and len(example.input_ids) == 60
    kept = [t for t in example.labels if t != IGNORE]
    assert kept == [t for t in example.contrast_labels if t != IGNORE] and kept
    batch = collate(dataset.examples, 0)
    assert int((batch["labels"][:, 1:] != IGNORE).sum()) == int((batch["contrast_labels"][:, 1:] != IGNORE).sum())


def test_contrast_needs_a_persona_on_every_row(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"persona": PERSONA, "messages": CHAT}) + "\n" + json.dumps({"messages": CHAT}) + "\n")
    assert len(load_examples(path, tokenizer, 256).examples) == 2
    with pytest.raises(PersonalmError, match=r"d\.jsonl:2: no 'persona' field"):
        load_examples(path, tokenizer, 256, contrast=PerCELoss.contrast)
    path.write_text(json.dumps({"persona": 3, "messages": CHAT}) + "\n")
    with pytest.raises(PersonalmError, match=r":1: 'persona' must be a non-empty string"):
        load_examples(path, tokenizer, 256)


def test_pir_is_highest_on_the_tokens_the_persona_gives_away(embedded_model):
    influence = PerContrast.from_local(embedded_model).influence([(PERSONA, CHAT)])[0]
    assert len(influence.tokens) == len(influence.pir) == len(influence.logp_with)
    assert "".join(influence.tokens).startswith(CHAT[1]["content"])
    by_token = dict(zip(influence.tokens, influence.pir, strict=False))
    persona_tokens = [p for t, p in by_token.items() if t.strip() in {"knitting", "Wh", "isk", "ers", "cat"}]
    generic = [p for t, p in by_token.items() if t.strip() in {"I", "by", "the", "on", "my", "while"}]
    assert sum(persona_tokens) / len(persona_tokens) > sum(generic) / len(generic) + 1.0
    top = sorted(zip(influence.pir, influence.tokens, strict=True), reverse=True)[:2]
    assert {t.strip() for _, t in top} <= {"cat", "Wh", "knitting"}


def test_pir_batches_agree_with_one_at_a_time(embedded_model):
    contrast = PerContrast.from_local(embedded_model, token_budget=64)
    other = (
        "I am a firefighter in Boston.",
        [{"role": "user", "content": "Job?"}, {"role": "assistant", "content": "Firefighter."}],
    )
    together = contrast.influence([(PERSONA, CHAT), other])
    alone = contrast.influence([other])[0]
    assert together[1].tokens == alone.tokens
    assert together[1].pir == pytest.approx(alone.pir, abs=1e-3)


def _fixed_batch(pir: torch.Tensor, vocab: int = 7) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Supervised-position logits with known log-probs, and a logp_without that makes PIR exactly `pir`."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, vocab)
    labels = torch.tensor([[IGNORE, 3, 1, 5], [IGNORE, IGNORE, 2, IGNORE]])
    rows, targets = selected(logits, labels)
    rows = rows.detach().requires_grad_()
    logp = -F.cross_entropy(rows, targets, reduction="none").detach()
    return rows, targets, {"logp_without": logp - pir}


def test_perce_with_all_weights_one_equals_ce():
    logits, labels, batch = _fixed_batch(torch.tensor([0.3, -2.0, 4.0, 1.0]))
    total, count = PerCELoss(clip_min=1.0, clip_max=1.0)(logits, labels, batch)
    ce_total, ce_count = cross_entropy(logits, labels, batch)
    assert int(count) == int(ce_count) == 4
    torch.testing.assert_close(total, ce_total)


def test_weights_are_the_clipped_pir_and_stats_report_them():
    pir = torch.tensor([-3.0, 0.5, 0.8, 2.0, 4.99, 5.0, 9.0])
    torch.testing.assert_close(perce_weights(pir, 0.8, 5.0), torch.tensor([0.8, 0.8, 0.8, 2.0, 4.99, 5.0, 5.0]))
    logits, labels, batch = _fixed_batch(torch.tensor([-3.0, 2.0, 9.0, 0.5]))
    loss = PerCELoss()
    total, _ = loss(logits, labels, batch)
    nll = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(total, (torch.tensor([0.8, 2.0, 5.0, 0.8]) * nll).sum())
    stats = loss.step_stats()
    assert stats["weight_min"] == 0.8 and stats["weight_max"] == 5.0 and stats["weight_mean"] == pytest.approx(2.15)
    assert stats["frac_clip_min"] == 0.5 and stats["frac_clip_max"] == 0.25
    assert stats["ce"] == pytest.approx(float(nll.detach().mean()), abs=1e-4)
    assert loss.step_stats() == {}


def test_no_gradient_flows_through_the_weights():
    """Inside the clip range w = PIR depends on the logits; detached, the gradient is w_i · ∇CE_i."""
    logits, labels, batch = _fixed_batch(torch.tensor([1.5, 2.0, 3.0, 4.0]))
    total, _ = PerCELoss()(logits, labels, batch)
    total.backward()
    perce_grad = logits.grad.clone()
    logits.grad = None
    fixed = torch.tensor([1.5, 2.0, 3.0, 4.0])
    (fixed * F.cross_entropy(logits, labels, reduction="none")).sum().backward()
    torch.testing.assert_close(perce_grad, logits.grad)


def test_loss_registry_builds_perce_with_its_bounds():
    loss = get_loss("perce", clip_min=0.5, clip_max=8.0)
    assert isinstance(loss, PerCELoss) and contrast_of(loss) is tokenize_contrast
    assert (loss.clip_min, loss.clip_max) == (0.5, 8.0)
    assert get_loss("ce", clip_min=0.5) is cross_entropy
    with pytest.raises(PersonalmError, match="must not exceed"):
        get_loss("perce", clip_min=6.0, clip_max=5.0)


def _sft(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "sft", str(data), "-o", str(out),
        "--max-steps", "2", "--batch-size", "2", "--max-len", "96", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_train_perce_logs_the_weight_distribution_and_rejects_bad_input(tmp_path, cli):
    data = tmp_path / "d.jsonl"
    rows = [{"persona": PERSONA, "messages": CHAT}, {"persona": "I am a firefighter in Boston.", "messages": CHAT}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = cli.run(*_sft(data, tmp_path / "a", "--loss", "perce"))
    assert run.returncode == 0, run.stderr[-2000:]
    log = [json.loads(line) for line in open(tmp_path / "a" / "train_log.jsonl")]
    assert len(log) == 2
    for row in log:
        assert 0.8 <= row["weight_min"] <= row["weight_mean"] <= row["weight_max"] <= 5.0
        assert 0.0 <= row["frac_clip_min"] <= 1.0 and row["ce"] > 0
    config = json.loads((tmp_path / "a" / "train_config.json").read_text())["config"]
    assert (config["loss"], config["clip_min"], config["clip_max"]) == ("perce", 0.8, 5.0)

    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"messages": CHAT}) + "\n")
    for args, needle in (
        ((bare, tmp_path / "b", "--loss", "perce"), "bare.jsonl:1: no 'persona' field"),
        ((data, tmp_path / "c", "--loss", "perce", "--clip-min", "6"), "--clip-min 6.0 must not exceed --clip-max 5.0"),
        ((data, tmp_path / "d", "--loss", "focal"), "unknown loss 'focal'"),
    ):
        bad = cli.run(*_sft(*args), timeout=300)
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-1000:]


@pytest.mark.slow
def test_bench_perce_reports_the_step_time_ratio(cli):
    from personalm.paths import data_dir

    if not (data_dir() / "persona_chat" / "valid.csv").is_file():
        pytest.skip("persona-chat data not found (set PERSONALM_DATA)")
    result = cli.json("bench", "perce", "--batch-size", "1", "--repeats", "1", "--max-len", "64", "--json")
    assert result["step_time_ratio"] == pytest.approx(result["perce_step_s"] / result["ce_step_s"], rel=0.01)
    assert result["batch_size"] == 1 and result["ce_step_s"] > 0


def test_supervised_logits_are_the_full_forward_at_supervised_positions(embedded_model):
    model = embedded_model.model
    ids = torch.tensor([[1, 504, 3287, 314, 253, 2], [1, 2018, 339, 7, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    labels = torch.tensor([[IGNORE, IGNORE, 3287, 314, 253, 2], [IGNORE, IGNORE, IGNORE, 7, 2, IGNORE]])
    with torch.inference_mode():
        rows, targets = supervised_logits(model, ids, mask, labels)
        full_rows, full_targets = selected(model(input_ids=ids, attention_mask=mask).logits, labels)
    assert rows.shape == (6, model.config.vocab_size)
    torch.testing.assert_close(targets, full_targets)
    torch.testing.assert_close(rows, full_rows, atol=1e-4, rtol=1e-4)
