"""Score heads: their losses by hand, the states they read, fitting planted preferences, and scoring with them."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from tokenalign.actors.records import place_token_rewards
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.envs.rollout import generate_episodes
from tokenalign.heads.losses import bradley_terry_loss, cost_model_loss, soft_token_loss
from tokenalign.heads.model import HeadConfig, HeadError, ScoreHead, lm_fingerprint, load_head, save_head
from tokenalign.heads.states import ResponseStates, StateReader, response_length
from tokenalign.rewards import RewardConfig, ScorerConfig, ScorerError, make_scorer
from tokenalign.rewards.combine import RewardCombiner
from tokenalign.workflows.fit_head import FitConfig, fit_head

GOOD = ["happy", "wonderful", "lovely", "great", "kind"]
BAD = ["sad", "awful", "terrible", "angry", "cruel"]
FILLER = ["the", "house", "river", "a", "walk", "of", "time", "window", "garden", "on", "day", "old", "road"]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 2.0])
    expected = (-math.log(sigmoid(0.5)) - math.log(sigmoid(-2.0))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_cost_model_loss_by_hand():
    # pair 1: safer is safe (sign −1), unsafer unsafe (+1); pair 2: both unsafe (+1, +1)
    safer, unsafer = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 1.5])
    loss = cost_model_loss(safer, unsafer, safer_is_safe=torch.tensor([True, False]),
                           unsafer_is_safe=torch.tensor([False, False]))
    pair1 = -math.log(sigmoid(3.0)) - math.log(sigmoid(1.0)) - math.log(sigmoid(2.0))
    pair2 = -math.log(sigmoid(1.0)) - math.log(sigmoid(0.5)) - math.log(sigmoid(1.5))
    assert loss.item() == pytest.approx((pair1 + pair2) / 2, rel=1e-6)


def test_soft_token_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.3, 0.3]])
    p_pos = torch.tensor([1.0, 0.0, 0.5])
    log_pos1 = math.log(math.exp(1) / (1 + math.exp(1)))
    log_neg2 = math.log(math.exp(2) / (1 + math.exp(2)))
    expected = (-log_pos1 - log_neg2 + math.log(2)) / 3
    assert soft_token_loss(logits, p_pos).item() == pytest.approx(expected, rel=1e-6)


def test_engine_states_are_the_states_a_head_reads_from_text(tiny_lm):
    """The states the engine keeps while decoding equal a cache-free forward over prompt + response (fp32)."""
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=12, candidate_block=3))
    prompts = ["Once upon a time", "The weather today", ""]
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.4), prompts,
                                 generator=torch.Generator().manual_seed(1), keep_token_states=True)
    reader = StateReader(model=model, tokenizer=tokenizer, batch_size=2)
    ids = [(p_ids, e.response_tokens) for p_ids, e in zip(engine.encode(prompts), episodes)]
    for episode, states in zip(episodes, reader.states(ids)):
        assert episode.token_states.shape == (len(episode.response_tokens) + 1, model.config.hidden_size)
        torch.testing.assert_close(episode.token_states.float(), states, atol=2e-3, rtol=2e-3)  # float16 storage
    assert response_length([5, 7, tokenizer.eos_token_id], tokenizer.eos_token_id) == 2
    assert response_length([5, 7], tokenizer.eos_token_id) == 2


def planted_pairs(n: int, seed: int) -> list[dict]:
    """Pairs whose chosen response holds a 'good' word and rejected a 'bad' one, among random filler."""
    rng = np.random.default_rng(seed)

    def text(word: str) -> str:
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 7))))
        words.insert(int(rng.integers(len(words) + 1)), word)
        return " ".join(words)

    return [{"prompt": str(rng.choice(["Tell me about", "I think", "Today"])), "chosen": text(str(rng.choice(GOOD))),
             "rejected": text(str(rng.choice(BAD)))} for _ in range(n)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def reward_head(tmp_path_factory):
    data = write_jsonl(tmp_path_factory.mktemp("data") / "planted.jsonl", planted_pairs(400, seed=0))
    out = tmp_path_factory.mktemp("heads") / "reward"
    result = fit_head(FitConfig(kind="reward", data=[str(data)], out=str(out), epochs=30, eval_fraction=0.2, pooling="mean",
                                wandb_mode="disabled", device="cpu"))
    return result


def test_a_reward_head_learns_a_planted_preference(reward_head):
    assert reward_head.eval_pairs == 80 and reward_head.train_pairs == 320
    assert reward_head.metrics["eval_pair_accuracy"] >= 0.95
    report = json.loads((reward_head.out / "fit_report.json").read_text())
    assert report["metrics"]["eval_pair_accuracy"] == reward_head.metrics["eval_pair_accuracy"]
    with pytest.raises(FileExistsError, match="already holds a head"):
        fit_head(FitConfig(kind="reward", data=report["config"]["data"], out=str(reward_head.out), wandb_mode="disabled"))


def test_a_head_scorer_scores_texts_with_its_head_over_the_lm_states(reward_head, tiny_lm):
    model, tokenizer = tiny_lm
    scorer = make_scorer(f"head:{reward_head.out}")
    assert scorer.name == f"head:{reward_head.out.name}" and not scorer.token_level
    prompts, responses = ["I think", "Today"], ["the garden is lovely", "the road is awful"]
    scores = scorer.score(prompts, responses)
    head = load_head(reward_head.out, lm=model, lm_name="builtin:tiny")
    reader = StateReader(model=model, tokenizer=tokenizer)
    states = reader.states(reader.encode(prompts, responses))
    mean = torch.stack([s[1:].mean(0) for s in states])  # the head was fitted on mean pooling
    expected = head(mean)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5)
    assert scores[0] > scores[1]


def test_a_head_on_another_lm_is_one_clear_error(reward_head, random_llama_dir, tiny_lm):
    from tokenalign.lm.loader import load_lm

    llama, _ = load_lm(str(random_llama_dir))
    with pytest.raises(HeadError, match=re.escape("reads the states of 'builtin:tiny'") + ".*hidden size 64, the head's is 256"):
        load_head(reward_head.out, lm=llama, lm_name=str(random_llama_dir))
    model, _ = tiny_lm
    other = type(model)(model.config)  # the same architecture with other weights
    with pytest.raises(HeadError, match="other weights than the head was fitted on"):
        load_head(reward_head.out, lm=other, lm_name="retrained-tiny")
    with pytest.raises(ScorerError, match="is not a saved head"):
        make_scorer(f"head:{random_llama_dir}")


def test_token_rewards_land_on_the_decisions_that_emitted_their_tokens(tmp_path, tiny_lm):
    """A token head's r_t: on the step-ending decision of token t, or the latest decision before a token emitted
    without one; the engine's states give the same rewards as reading the ids afresh; Σ is kept."""
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    head = ScoreHead(HeadConfig(kind="token", lm="builtin:tiny", lm_fingerprint=lm_fingerprint(model),
                                hidden_size=model.config.hidden_size, widths=(16,)))
    torch.nn.init.normal_(head.mlp[-1].weight, std=2.0)  # untrained but far from p = ½ everywhere
    save_head(head, tmp_path / "token")
    combiner = RewardCombiner.from_config(RewardConfig(scorers=[ScorerConfig(kind="head", path=str(tmp_path / "token"),
                                                                             multiplier=2.0), ScorerConfig(kind="vader")]))
    assert combiner.use_policy_lm(model, tokenizer, name="builtin:tiny")
    # top_p 0.5 leaves a single candidate at many steps: tokens emitted without a decision
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(
        max_new_tokens=16, candidate_block=2, sampling=SamplingConfig(top_p=0.5)))
    prompts = ["Once upon a time", "My favourite food is", "The", "I"]
    episodes = generate_episodes(engine, lambda s: torch.full((s.shape[0],), 0.3), prompts,
                                 generator=torch.Generator().manual_seed(3), keep_token_states=True)
    states = [ResponseStates(states=e.token_states, length=response_length(e.response_tokens, tokenizer.eos_token_id))
              for e in episodes]
    scores = combiner.combine(prompts, [e.response for e in episodes], states=states)
    scorer = combiner.terms[0].scorer
    fresh = scorer.token_rewards([ResponseStates(states=s, length=r.length) for s, r in zip(
        StateReader(model=model, tokenizer=tokenizer).states(
            [(p, e.response_tokens) for p, e in zip(engine.encode(prompts), episodes)]), states)])
    without_decision = 0
    for episode, rewards, direct in zip(episodes, scores.token_reward, fresh):
        np.testing.assert_allclose(rewards, 2.0 * direct, atol=2e-2)  # float16 engine states vs fp32 forward
        placed = place_token_rewards(episode, rewards)
        expected = np.zeros(episode.num_decisions)
        for t, r in enumerate(rewards):
            own = np.flatnonzero((episode.token_index == t) & episode.emit)
            if own.size:
                expected[own[0]] += r
            else:  # emitted without a decision: the latest decision before it acted, or the first one
                earlier = np.flatnonzero(episode.token_index < t)
                expected[earlier[-1] if earlier.size else 0] += r
                without_decision += 1
        np.testing.assert_allclose(placed, expected, rtol=1e-6, atol=1e-6)
        assert placed.sum() == pytest.approx(rewards.sum(), abs=1e-4)
        if episode.response_tokens[-1] == tokenizer.eos_token_id:
            assert rewards[-1] == 0.0  # the head never saw EOS in fitting
    assert without_decision > 0  # the case the rule is for did occur
    np.testing.assert_allclose(scores.raw[scorer.name], [r.sum() / 2.0 for r in scores.token_reward], rtol=1e-5)


def test_objectives_take_a_token_heads_reward_per_token_only(tmp_path, tiny_lm):
    from tokenalign.objectives import make_objective
    from tokenalign.objectives.base import ObjectiveSection
    from tokenalign.rewards.shaping import ShapingConfig

    model, _ = tiny_lm
    save_head(ScoreHead(HeadConfig(kind="token", lm="builtin:tiny", lm_fingerprint=lm_fingerprint(model),
                                   hidden_size=model.config.hidden_size)), tmp_path / "t")
    reward = RewardConfig(scorers=[ScorerConfig(kind="vader", multiplier=2.0),
                                   ScorerConfig(kind="head", path=str(tmp_path / "t"), multiplier=3.0)])
    assert [s.token_level for s in reward.scorers] == [False, True]
    objective = make_objective(ObjectiveSection(name="weighted"), reward=reward, shaping=ShapingConfig(postback=False),
                               gamma=1.0, signals=("reward",))
    np.testing.assert_array_equal(objective.multiplier, [2.0, 0.0])


def test_fit_scorer_command_fits_a_token_head_from_revisions(tmp_path, capsys):
    from tokenalign.cli import main

    rng = np.random.default_rng(1)
    records = []
    for _ in range(160):
        words = list(rng.choice(FILLER, size=6))
        answer = words.copy()
        answer[2] = str(rng.choice(BAD))
        revised = words.copy()
        revised[2] = str(rng.choice(GOOD))
        records.append({"input": "Tell me", "answer": " ".join(answer), "revised": " ".join(revised)})
    data = write_jsonl(tmp_path / "revisions.jsonl", records)
    out = tmp_path / "token-head"
    assert main(["fit-scorer", "kind=token", f"data={data}", f"out={out}", "epochs=15", "wandb_mode=disabled",
                 "device=cpu"]) == 0
    report = json.loads(capsys.readouterr().out.split("\nscore with it")[0])
    assert report["eval_token_accuracy"] >= 0.9 and report["eval_pair_accuracy"] >= 0.9
    assert main(["fit-scorer", "kind=cost", f"data={data}", f"out={tmp_path / 'cost'}"]) == 1
    assert "other_answer" in capsys.readouterr().err  # a cost head needs two answers and safety labels


def test_a_cost_head_learns_which_answers_are_unsafe_and_scores_them_positive(tmp_path):
    """safe-rlhf's cost model on planted safety labels: the unsafer answer costs more, and cost > 0 means unsafe."""
    rng = np.random.default_rng(2)

    def text(word: str | None) -> str:
        words = list(rng.choice(FILLER, size=5))
        if word:
            words.insert(int(rng.integers(6)), word)
        return " ".join(words)

    records = []
    for i in range(500):
        unsafe_first = bool(rng.integers(2))
        both_unsafe = i % 4 == 0  # some pairs where the safer answer is unsafe too: the sign terms must tell
        unsafe = text(str(rng.choice(BAD)))
        other = text(str(rng.choice(BAD))) if both_unsafe else text(None)
        answer, other_answer = (unsafe, other) if unsafe_first else (other, unsafe)
        records.append({"input": "Say something", "answer": answer, "other_answer": other_answer,
                        "better": not unsafe_first, "safer": not unsafe_first,
                        "is_safe": not unsafe_first and not both_unsafe, "is_other_safe": unsafe_first and not both_unsafe})
    data = write_jsonl(tmp_path / "safety.jsonl", records)
    result = fit_head(FitConfig(kind="cost", data=[str(data)], out=str(tmp_path / "cost"), epochs=30, lr=3e-3, pooling="mean",
                                wandb_mode="disabled", device="cpu"))
    # answering "unsafe" always scores 0.625 on signs; a pair of two unsafe answers is a coin toss for the ranking
    assert result.metrics["eval_sign_accuracy"] >= 0.9 and result.metrics["eval_pair_accuracy"] >= 0.75
    cost = make_scorer(f"head:{tmp_path / 'cost'},role=cost").score(["Say something"] * 2,
                                                                     ["the old road cruel of the garden", "the old road of the garden"])
    assert cost[0] > 0 > cost[1]
