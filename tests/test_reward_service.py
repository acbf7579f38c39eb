"""The RewardService on real Ray: concurrent requests from two actors scored as one batch, as a local combiner would."""
from __future__ import annotations

import numpy as np
import ray

from tokenalign.actors.reward_service import RemoteCombiner, RewardService, place_scorers
from tokenalign.rewards.combine import RewardCombiner, RewardConfig
from tokenalign.rewards.factory import ScorerConfig

CONFIG = RewardConfig(scorers=[ScorerConfig(kind="vader", multiplier=2.0),
                               ScorerConfig(kind="profanity", role="cost", multiplier=-1.0)])
PROMPTS = ["Tell me about your day", "What do you think of cats?", "Describe the weather"]
RESPONSES = [["It was a wonderful, happy day!", "Terrible and awful."], ["Cats are lovely.", "I hate this damn thing."],
             ["Sunny and bright, a joy.", "Grey."]]


@ray.remote
def ask(service, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    """One rollout actor's request, through the same RemoteCombiner the actors use."""
    scores = RemoteCombiner(service, timeout_s=60).combine(prompts, responses, prompt_ids=[0] * len(prompts))
    return {"final": scores.final, "reward": scores.reward, "cost": scores.cost}


def test_concurrent_requests_from_two_actors_are_scored_as_one_batch(ray_cluster):
    service = RewardService.remote(config=CONFIG, window_s=1.0)
    ray.get(service.stats.remote())  # the service is up before the two requests race
    requests = [(PROMPTS[:2], [RESPONSES[0][0], RESPONSES[1][1]]), (PROMPTS, [r[1] for r in RESPONSES])]
    results = ray.get([ask.remote(service, p, r) for p, r in requests])
    stats = ray.get(service.stats.remote())
    assert stats == {"batches_scored": 1, "requests_scored": 2}
    local = RewardCombiner.from_config(CONFIG)
    for (prompts, responses), result in zip(requests, results):
        expected = local.combine(prompts, responses, prompt_ids=[0] * len(prompts))
        np.testing.assert_allclose(result["final"], expected.final, rtol=1e-6)
        np.testing.assert_allclose(result["cost"], expected.cost, rtol=1e-6)
    ray.kill(service)


def test_a_scorer_error_reaches_every_waiting_actor(ray_cluster):
    config = RewardConfig(scorers=[ScorerConfig(kind="python", path="math:fsum")])  # fsum(prompts, responses) raises
    try:
        service = RewardService.remote(config=config, window_s=0.5)
        errors = []
        for ref in [ask.remote(service, PROMPTS[:1], ["x"]), ask.remote(service, PROMPTS[:1], ["y"])]:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as err:
                errors.append(str(err))
        assert len(errors) == 2 and all("math:fsum" in e for e in errors)
    finally:
        ray.kill(service)


def test_model_scorers_are_placed_on_their_own_gpus():
    """MARA's reward and cost models (both device=auto) go to cuda:0 and cuda:1, not both to cuda:0; a scorer
    with an explicit device and a model-free one are left alone."""
    config = RewardConfig(scorers=[
        ScorerConfig(kind="hf-classifier", path="/models/rm"),
        ScorerConfig(kind="safe-rlhf-score", path="/models/cost", role="cost"),
        ScorerConfig.from_mapping({"kind": "hf-classifier", "path": "/models/other", "device": "cpu"}),
        ScorerConfig(kind="vader"),
    ])
    placed = place_scorers(config, gpus=2)
    assert [getattr(s.options, "device", None) for s in placed.scorers] == ["cuda:0", "cuda:1", "cpu", None]
    assert place_scorers(config, gpus=1) is config
