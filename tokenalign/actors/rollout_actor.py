"""RolloutActor: a Ray actor that decodes prompts with its copy of the agent and writes episodes to the buffer.

It loads the LLM once onto its device, runs the batched engine's fast path, scores finished responses
(its own scorers, or the shared RewardService for large reward models), turns what it observed (raw
scores, behaviour log-probabilities) into Arrow decision records and adds them straight to the buffer:
episode data never passes through the driver. With a preference objective it draws each episode's
weights w and conditions the agent on them. Between batches it pulls new agent weights when the
published version has changed.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import ray
import torch

from tokenalign.actors.records import episodes_to_records, one_step_scores
from tokenalign.actors.weights import fetch_if_newer
from tokenalign.agents.loading import policy_from_state
from tokenalign.buffers.layout import RecordLayout
from tokenalign.buffers.spec import BufferSpec
from tokenalign.config import TrainConfig
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.engine import DecodingEngine
from tokenalign.envs.episode import Episode
from tokenalign.envs.policies import AcceptPolicy, conditioned
from tokenalign.envs.rollout import generate_episodes
from tokenalign.envs.task import DecodingTask
from tokenalign.heads.states import ResponseStates, response_length
from tokenalign.lm.loader import load_lm
from tokenalign.objectives import Objective
from tokenalign.rewards.base import ScorerError
from tokenalign.rewards.combine import RewardCombiner

log = logging.getLogger(__name__)


def actor_device(gpus: float, *, gpu_ids: list[Any] | None = None, visible: int | None = None) -> str:
    """The torch device of an actor Ray gave `gpus` GPUs (`gpu_ids`, default `ray.get_gpu_ids()`) while torch
    sees `visible` CUDA devices (default `torch.cuda.device_count()`): cuda (its first GPU) or the CPU.

    Ray points CUDA_VISIBLE_DEVICES at the actor's own GPUs, so torch must see exactly those; when it sees
    others (Ray told not to set the variable), every actor would land on cuda:0 of the node: refused.
    """
    if gpus <= 0:
        return "cpu"
    visible = torch.cuda.device_count() if visible is None else visible
    if visible == 0:
        log.warning("this actor was given %g GPU(s) but torch sees no CUDA device; running on CPU", gpus)
        return "cpu"
    gpu_ids = [str(g) for g in (ray.get_gpu_ids() if gpu_ids is None else gpu_ids)]
    if gpu_ids and visible != len(gpu_ids):
        raise RuntimeError(f"Ray gave this actor GPU(s) {gpu_ids} but torch sees {visible} CUDA devices, so it "
                           "cannot tell which are its own (all actors would share cuda:0): unset "
                           "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES so that Ray sets CUDA_VISIBLE_DEVICES per actor")
    return "cuda"


def build_task(config: TrainConfig, *, device: str, combiner: Any = None) -> DecodingTask:
    """The actor's engine over the training prompts, with MARA's shaping forcing all-candidate blocks; an LM
    on several GPUs (gpus_per_actor > 1) spreads its layers over them."""
    model, tokenizer = load_lm(config.lm.path, device=device, dtype=config.lm.dtype,
                               spread=device == "cuda" and config.rollout.gpus_per_actor > 1)
    block = 0 if config.shaping.token_reward != "none" else config.engine.candidate_block
    engine_config = dataclasses.replace(config.engine, candidate_block=block)
    prompts = load_prompts(config.data.train, prompt_field=config.data.prompt_field, seed=config.data.seed)
    return DecodingTask(engine=DecodingEngine(model=model, tokenizer=tokenizer, config=engine_config),
                        prompts=prompts, combiner=combiner or RewardCombiner.from_config(config.reward))


@ray.remote
class RolloutActor:
    """Collects episodes into the buffer; see the module docstring."""

    def __init__(
        self,
        *,
        index: int,
        config: TrainConfig,
        buffer_spec: BufferSpec,
        weights: Any,
        objective: Objective,
        reward_service: Any = None,
    ) -> None:
        torch.set_num_threads(config.rollout.torch_threads)
        self.index = index
        self.config = config
        self.objective = objective
        self.layout: RecordLayout = buffer_spec.layout
        self.device = actor_device(config.rollout.gpus_per_actor)
        combiner = None
        if reward_service is not None:
            from tokenalign.actors.reward_service import RemoteCombiner

            token_heads = [c.resolved_name for c in config.reward.scorers if c.token_level]
            if token_heads:
                raise ScorerError(f"token heads {token_heads} reward the policy's own tokens from its states, which stay "
                                  "in the rollout actor: score with rollout.reward_service_gpus=0")
            combiner = RemoteCombiner(reward_service, timeout_s=config.run.remote_timeout_s)
        self.task = build_task(config, device=self.device, combiner=combiner)
        # Heads fitted on the policy LM score from the states decoding computed anyway: keep those.
        self.keep_token_states = reward_service is None and self.task.combiner.use_policy_lm(
            self.task.engine.model, self.task.engine.tokenizer, name=config.lm.path)
        self.buffer = buffer_spec.connect()
        self.weights = weights
        self.version = -1
        self.policy: AcceptPolicy | None = None
        # Seeded by actor index: a restarted actor replays its stream from the start, which is harmless
        # (its prompts come from the driver) and keeps runs reproducible.
        self.generator = torch.Generator(device=self.device).manual_seed(config.run.seed * 1000 + index)
        self.preference_rng = np.random.default_rng(config.run.seed * 1000 + index)

    def info(self) -> dict[str, Any]:
        """Where the actor landed: its GPU ids, device, and the size of its candidate states."""
        return {"index": self.index, "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": self.device,
                "state_size": self.task.state_size, "num_prompts": len(self.task.prompts)}

    def _sync_weights(self) -> None:
        version, state = fetch_if_newer(self.weights, self.version, timeout_s=self.config.run.remote_timeout_s)
        if state is not None:
            self.policy = policy_from_state(state, state_size=self.task.state_size, device=self.device)
            if self.policy.preference_dim != self.layout.preference_dim:
                raise RuntimeError(f"the published agent is conditioned on {self.policy.preference_dim} preference "
                                   f"weights, this run's records on {self.layout.preference_dim}")
            self.policy.eval()
            self.version = version
        if self.policy is None:
            raise RuntimeError("no agent weights were published before collection; the learner must publish first")

    @torch.no_grad()
    def collect(self, prompt_indices: list[int]) -> dict[str, float]:
        """Decode the given training prompts (repeats allowed: RLOO's k samples), write the episodes, return stats."""
        start = time.perf_counter()
        self._sync_weights()
        prompts = [self.task.prompts[i] for i in prompt_indices]
        preference = self.objective.sample_preferences(len(prompts), self.preference_rng)
        candidates = self.layout.candidate_rows
        episodes = generate_episodes(self.task.engine, self.policy, [p.text for p in prompts], generator=self.generator,
                                     shaping=self.config.shaping, preference=preference,
                                     keep_token_states=self.keep_token_states,
                                     records="candidates" if candidates else "decisions")
        scores = self.task.score(prompts, [e.response for e in episodes], states=self._states(episodes))
        one_step = {}
        if candidates:
            one_step = dict(zip(("step_scores", "prefix_scores"), one_step_scores(
                episodes, [p.text for p in prompts], tokenizer=self.task.engine.tokenizer,
                score=self.task.combiner.raw_scores)))
        records = episodes_to_records(episodes, scores, layout=self.layout, prompt_ids=[p.id for p in prompts],
                                      policy_version=self.version, preference=preference, **one_step)
        if records is not None:
            self.buffer.add(records)
        decisions = np.array([e.num_decisions for e in episodes])
        written = decisions > 0
        return {
            "episodes": float(len(episodes)),
            "episodes_written": float(written.sum()),
            "groups_written": float(_complete_groups(prompts, written)),
            "decisions": float(decisions.sum()),
            "tokens": float(sum(len(e.response_tokens) for e in episodes)),
            "reward": float(scores.final.mean()),
            "reward_only": float(scores.reward.mean()),
            "cost": float(scores.cost.mean()),
            **{f"score/{name}": float(raw.mean()) for name, raw in scores.raw.items()},  # e.g. a gold scorer at ×0
            "accept_rate": float(sum(int(e.action.sum()) for e in episodes) / max(1, decisions.sum())),
            "kl_per_response": float(np.mean([e.kl for e in episodes])),
            "kl_per_token": float(sum(e.kl for e in episodes) / max(1, sum(len(e.response_tokens) for e in episodes))),
            "policy_version": float(self.version),
            "seconds": time.perf_counter() - start,
        }

    def _states(self, episodes: list[Episode]) -> list[ResponseStates] | None:
        if not self.keep_token_states:
            return None
        eos = self.task.engine.eos_token_id
        return [ResponseStates(states=e.token_states, length=response_length(e.response_tokens, eos)) for e in episodes]

    def sample_generations(self, prompt_indices: list[int]) -> list[dict[str, Any]]:
        """A few generations of the agent (sampled, as it is trained and evaluated) with their scores and KLs."""
        self._sync_weights()
        return sample_generations(self.task, self.policy, prompt_indices, generator=self.generator)

    def evaluate(self, *, num_prompts: int, best_of: int, seed: int) -> dict[str, Any]:
        """The end-of-run summary on held-out prompts: the agent alone, the base LM alone, best-of-N."""
        from tokenalign.eval.summary import evaluate_run

        self._sync_weights()
        return evaluate_run(self.task, self.policy, config=self.config, num_prompts=num_prompts, best_of=best_of,
                            seed=seed)


def sample_generations(task: DecodingTask, policy: AcceptPolicy, prompt_indices: list[int], *,
                       generator: torch.Generator) -> list[dict[str, Any]]:
    """The agent's generations for training prompts `prompt_indices`, with their scores and KL per response
    (a preference-conditioned agent at equal weights)."""
    prompts = [task.prompts[i] for i in prompt_indices]
    dim = policy.preference_dim
    agent = conditioned(policy, [1.0 / dim] * dim if dim else None)
    episodes = generate_episodes(task.engine, agent, [p.text for p in prompts], generator=generator)
    scores = task.score(prompts, [e.response for e in episodes])
    return [{"prompt": p.text, "response": e.response, "reward": float(scores.final[i]),
             "cost": float(scores.cost[i]), "kl": e.kl} for i, (p, e) in enumerate(zip(prompts, episodes))]


def _complete_groups(prompts: list[Any], written: np.ndarray) -> int:
    """Prompts all of whose episodes were written (RLOO consumes only complete groups)."""
    by_prompt: dict[int, bool] = {}
    for prompt, ok in zip(prompts, written.tolist()):
        by_prompt[prompt.id] = by_prompt.get(prompt.id, True) and ok
    return sum(by_prompt.values())
