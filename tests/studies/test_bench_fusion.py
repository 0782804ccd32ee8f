"""`personalm bench fusion` at its smallest size on the real embedded model: both decode paths timed
on the same avatar chats, the same greedy answers, and the turn latencies with and without fusion."""

import json

import pytest

from personalm.studies.bench.fusion import avatar_chats, run


def test_avatar_chats_pair_the_served_chat_with_the_name_only_one():
    served, plain = avatar_chats(3)[1]
    assert "Things you have said" in served[0]["content"] and "About you" in served[0]["content"]
    assert "Things you have said" not in plain[0]["content"] and served[-1] == plain[-1]
    assert len({json.dumps(s) for s, _ in avatar_chats(3)}) == 3


@pytest.mark.slow
def test_the_bench_times_both_paths_on_the_same_chats():
    result = run(rows=2, turns=2, max_tokens=6)
    assert result["same_answers"] >= 1 and result["generated_tokens"] > 0
    assert result["ours_tokens_s"] > 0 and result["peer_tokens_s"] > 0 and result["speedup"] > 0
    assert result["prompt_tokens_mean"] > 100  # profile and three passages
    assert result["fused_p50_ms"] > 0 and result["voice_alone_p50_ms"] > 0 and result["adapter"] is None
    assert result["fused_ms_per_token_p50"] > 0 and result["voice_alone_ms_per_token_p50"] > 0
