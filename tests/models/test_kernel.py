"""The Llama kernel must compute what the Hugging Face forward computes."""

import torch

from personalm.models.llama_kernel import LlamaKernel, supports


def _hf_next_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1]


def test_prefill_and_decode_match_hf_forward(embedded_model):
    hf = embedded_model.model
    assert supports(hf)
    kernel = LlamaKernel(hf, slots=4, max_len=64)
    seqs = [[1, 9690, 198, 2683, 359, 253], [1, 4093, 198], [28120, 905, 30, 11, 42]]
    logits = kernel.prefill(0, seqs)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _hf_next_logits(hf, seq), atol=2e-3, rtol=1e-4)
    # Move the last sequence into slot 0 (as when a row finishes) and keep decoding there.
    kernel.move_slot(2, 0, len(seqs[2]))
    seqs = [seqs[2], seqs[1]]
    nxt = [int(logits[2].argmax()), int(logits[1].argmax())]
    step = kernel.decode(torch.tensor(nxt), torch.tensor([len(s) for s in seqs]))
    for row, (seq, token) in enumerate(zip(seqs, nxt, strict=True)):
        torch.testing.assert_close(step[row], _hf_next_logits(hf, seq + [token]), atol=2e-3, rtol=1e-4)


def test_unsupported_architecture_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    assert not supports(tiny)


def test_prefill_after_a_shared_prefix_matches_full_prefill(embedded_model):
    kernel = LlamaKernel(embedded_model.model, slots=3, max_len=64)
    prefix = [1, 9690, 198, 2683, 359, 253, 5356]
    tails = [[4093, 198, 6004], [28120, 905]]
    kernel.prefill(0, [prefix])
    saved = kernel.save_prefix(0, len(prefix))
    kernel.load_prefix(saved, 1, 2)
    logits = kernel.prefill(1, tails, offset=len(prefix))
    for row, tail in enumerate(tails):
        torch.testing.assert_close(
            logits[row], _hf_next_logits(embedded_model.model, prefix + tail), atol=2e-3, rtol=1e-4
        )


def test_refreshing_edited_projections_matches_a_kernel_built_afresh():
    import pytest
    from transformers import LlamaConfig, LlamaForCausalLM

    from personalm.models.llama_kernel import LlamaWeights

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    weights = LlamaWeights(model)
    kernel = LlamaKernel(weights, slots=1, max_len=16)
    seq = [[1, 5, 9, 3]]
    before = kernel.prefill(0, seq).clone()
    edited = ["model.layers.1.self_attn.v_proj", "model.layers.0.mlp.up_proj"]
    with torch.no_grad():
        for name in edited:
            model.get_submodule(name).weight.add_(0.5)
    torch.testing.assert_close(kernel.prefill(0, seq), before)  # the packed copy does not see edits ...
    weights.refresh(model, edited)  # ... until refreshed
    expected = LlamaKernel(model, slots=1, max_len=16).prefill(0, seq)
    torch.testing.assert_close(kernel.prefill(0, seq), expected)
    assert not torch.allclose(expected, before)
    with pytest.raises(ValueError, match="not a projection"):
        weights.refresh(model, ["lm_head"])
