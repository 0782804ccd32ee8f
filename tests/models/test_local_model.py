"""The local backend on the real embedded model: generation, scoring, adapters, other architectures."""

import pytest
import torch

from personalm.errors import PersonalmError
from personalm.models.base import SamplingParams
from personalm.models.local import LocalModel

QUESTIONS = [
    "Name a fruit that is yellow.",
    "What is two plus two? Answer in one sentence.",
    "Write a haiku about rain.",
    "Give me a tip for sleeping better.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat in five words.",
]


def chats(questions):
    return [[{"role": "user", "content": q}] for q in questions]


def hf_greedy(model: LocalModel, prompt, max_tokens: int) -> str:
    ids = torch.tensor([model.encode_prompt(prompt)])
    with torch.inference_mode():
        out = model.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False
        )
    return model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_batched_greedy_agrees_with_hf_one_at_a_time(embedded_model):
    prompts = chats(QUESTIONS)
    ours = embedded_model.generate(prompts, SamplingParams(max_tokens=24))
    agree = [g.text == hf_greedy(embedded_model, p, 24) for g, p in zip(ours, prompts, strict=True)]
    assert sum(agree) >= len(agree) - 1, agree
    assert all(g.finish_reason in {"stop", "length"} and g.completion_tokens <= 24 for g in ours)


def test_output_does_not_depend_on_batch_neighbours(embedded_model):
    params = SamplingParams(max_tokens=16)
    alone = embedded_model.generate(chats(QUESTIONS[2:3]), params)[0]
    batched = embedded_model.generate(chats(QUESTIONS), params)[2]
    assert alone.text == batched.text


def test_more_prompts_than_slots_are_all_answered_in_order():
    from personalm.models.embedded import ensure_converted

    small = LocalModel(ensure_converted(), max_batch=2)
    out = small.generate(chats(QUESTIONS[:5]), SamplingParams(max_tokens=6))
    assert len(out) == 5 and all(g.completion_tokens > 0 for g in out)
    single = [small.generate(chats([q]), SamplingParams(max_tokens=6))[0].text for q in QUESTIONS[:5]]
    assert [g.text for g in out] == single


def test_length_and_stop_strings(embedded_model):
    prompt = chats(["Count from one to twenty in words, separated by commas."])
    long = embedded_model.generate(prompt, SamplingParams(max_tokens=5))[0]
    assert long.finish_reason == "length" and long.completion_tokens == 5
    cut = embedded_model.generate(prompt, SamplingParams(max_tokens=40, stop=(",",)))[0]
    assert cut.finish_reason == "stop" and "," not in cut.text and cut.text


def test_sampling_is_seeded_per_prompt(embedded_model):
    prompt = chats(["Invent a name for a pet dragon."])
    p1 = SamplingParams(max_tokens=12, temperature=1.0, seed=1)
    first = embedded_model.generate(prompt * 3, p1)
    again = embedded_model.generate(prompt * 3, p1)
    assert [g.text for g in first] == [g.text for g in again]
    assert len({g.text for g in first}) > 1, "duplicates of one prompt must be different samples"
    other = embedded_model.generate(prompt, SamplingParams(max_tokens=12, temperature=1.0, seed=2))
    assert other[0].text != first[0].text


def test_plain_prompt_and_score(embedded_model):
    out = embedded_model.generate(["The capital of France is"], SamplingParams(max_tokens=4))[0]
    assert out.prompt_tokens == len(embedded_model.tokenizer("The capital of France is")["input_ids"])
    good, bad = embedded_model.score(["The capital of France is"] * 2, [" Paris", " banana"])
    assert good.tokens == [" Paris"] and good.total > bad.total + 5
    chat = chats(["What is the capital of France?"])[0]
    scored = embedded_model.score([chat], ["The capital of France is Paris."])[0]
    ids = embedded_model.encode_prompt(chat)
    cont = embedded_model.tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = embedded_model.model(torch.tensor([ids + cont])).logits[0].log_softmax(-1)
    manual = [logits[len(ids) - 1 + i, t].item() for i, t in enumerate(cont)]
    assert scored.logprobs == pytest.approx(manual, abs=1e-3)
    embedded_model.free_kernel()  # the KV cache and packed weights go; the next generate rebuilds them
    assert embedded_model.generate(["The capital of France is"], SamplingParams(max_tokens=4))[0].text == out.text


def test_score_is_batch_invariant(embedded_model):
    contexts = ["I like", "The weather today is very", "Q: 2+2=?\nA:"]
    conts = [" apples", " sunny and warm", " 4"]
    together = embedded_model.score(contexts, conts)
    for ctx, cont, joint in zip(contexts, conts, together, strict=True):
        assert embedded_model.score([ctx], [cont])[0].logprobs == pytest.approx(joint.logprobs, abs=1e-3)


def test_prompt_longer_than_context_is_a_clear_error(embedded_model):
    with pytest.raises(PersonalmError, match="does not fit the context"):
        embedded_model.generate(["word " * 9000], SamplingParams(max_tokens=2))


def test_lora_adapter_is_applied(embedded_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    from personalm.models.embedded import ensure_converted

    base = LocalModel(ensure_converted())
    peft_model = get_peft_model(
        base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    adapted = LocalModel(ensure_converted(), adapter=tmp_path / "adapter")
    assert adapted.model_id != embedded_model.model_id
    prompt = "The capital of France is"
    ids = torch.tensor([embedded_model.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        expected = peft_model(ids).logits[0, -1].log_softmax(-1)
        plain = embedded_model.model(ids).logits[0, -1].log_softmax(-1)
    got = adapted.score([prompt], [" Paris"])[0].logprobs[0]
    paris = embedded_model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    assert got == pytest.approx(expected[paris].item(), abs=1e-3)
    assert abs(got - plain[paris].item()) > 1e-3
    assert adapted.generate(chats(QUESTIONS[:2]), SamplingParams(max_tokens=6))
    with pytest.raises(PersonalmError, match="not a PEFT adapter"):
        LocalModel(ensure_converted(), adapter=tmp_path)


def test_other_architectures_use_transformers_generate(embedded_model, tmp_path):
    """Any local HF model directory works: a tiny random GPT-2 with the SmolLM2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = embedded_model.tokenizer
    config = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=len(tok),
        n_positions=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2-tiny")
    tok.save_pretrained(tmp_path / "gpt2-tiny")
    tiny = LocalModel(tmp_path / "gpt2-tiny")
    assert tiny.info()["engine"] == "transformers-generate"
    out = tiny.generate(chats(QUESTIONS[:3]), SamplingParams(max_tokens=5))
    assert len(out) == 3 and all(g.completion_tokens <= 5 for g in out)
    sampled = tiny.generate(["hello"] * 2, SamplingParams(max_tokens=5, temperature=1.0, seed=3))
    assert sampled == tiny.generate(["hello"] * 2, SamplingParams(max_tokens=5, temperature=1.0, seed=3))
    assert len(tiny.score(["hello"], [" world"])[0].logprobs) == 1


def test_not_a_model_directory(tmp_path):
    with pytest.raises(PersonalmError, match="not a Hugging Face model directory"):
        LocalModel(tmp_path)


def test_adapter_identity_covers_weight_bytes(tmp_path):
    from personalm.models.local import weights_digest

    first, second = tmp_path / "step-10", tmp_path / "step-20"
    for folder, weights in ((first, b"\x00" * 64), (second, b"\x01" * 64)):
        folder.mkdir()
        (folder / "adapter_config.json").write_text('{"r": 4}')
        (folder / "adapter_model.safetensors").write_bytes(weights)
    assert weights_digest(first, contents=True) != weights_digest(second, contents=True)
    assert weights_digest(first) == weights_digest(second)  # base models: names and sizes only
