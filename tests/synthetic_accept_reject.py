"""A synthetic accept/reject problem with a known optimum, shaped like the decoding engine's episodes.

A response has `num_tokens` steps; each step offers `num_candidates` candidates in order and the agent
decides on them one by one: accept emits the candidate, reject moves to the next, and the last candidate
is emitted without a decision once every other is rejected (the engine's rule). The base "LM" samples the
candidates uniformly, so π_ref accepts candidate i with 1/(C − i): the observation is [state ; its logit]. Every candidate is GOOD (+1), COSTLY (+1, cost 1) or BAD (−1), and
its state says which in two features (the rest is noise). The sequence reward, on the last decision,
is the mean value of the emitted tokens; the sequence cost is the fraction of COSTLY tokens emitted.
Every step holds a GOOD candidate, so accepting exactly the GOOD ones gives the optimal return 1 at
cost 0. With `costly_bonus` b > 0 a COSTLY token is worth 1 + b, tempting the agent into cost: since the
return is at most 1 + b·(fraction of COSTLY tokens), no policy with mean cost ≤ d earns more than 1 + b·d.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.buffers.batches import Transitions, concat_rows, select_rows

BAD, GOOD, COSTLY = 0, 1, 2


def observe(state: torch.Tensor, base_logit: torch.Tensor) -> torch.Tensor:
    """The agent's observation [state ; π_ref accept logit], as the engine builds it."""
    return torch.cat([state, base_logit.unsqueeze(-1)], dim=-1)


def concat(batches: list[Transitions]) -> Transitions:
    return concat_rows(batches)


def rows(batch: Transitions, index: torch.Tensor) -> Transitions:
    return select_rows(batch, index)


@dataclass(frozen=True)
class Prompts:
    kinds: torch.Tensor
    """(P, tokens, candidates) int64 BAD / GOOD / COSTLY."""
    states: torch.Tensor
    """(P, tokens, candidates, hidden) float32."""


@dataclass(frozen=True)
class Rollout:
    transitions: Transitions
    """Whole episodes in step order."""
    returns: torch.Tensor
    """(E,) sequence reward of each episode."""
    costs: torch.Tensor
    """(E,) sequence cost of each episode."""


@dataclass(frozen=True)
class AcceptRejectProblem:
    hidden_size: int = 16
    num_tokens: int = 4
    num_candidates: int = 4
    p_good: float = 0.25
    p_costly: float = 0.0
    costly_bonus: float = 0.0

    @property
    def base_logits(self) -> torch.Tensor:
        """(C,) π_ref's accept logit at each rank under uniform base sampling: log(1/(C − 1 − i)) (last: never asked)."""
        remaining = torch.arange(self.num_candidates - 1, -1, -1, dtype=torch.float32).clamp(min=1)
        return -remaining.log()

    def optimal_return(self, *, threshold: float = 0.0) -> float:
        """The optimal return, or for a cost threshold d an upper bound on the constrained optimum."""
        return 1.0 + self.costly_bonus * threshold

    def sample_prompts(self, num_prompts: int, *, generator: torch.Generator) -> Prompts:
        shape = (num_prompts, self.num_tokens, self.num_candidates)
        u = torch.rand(shape, generator=generator)
        kinds = torch.full(shape, BAD)
        kinds[u < self.p_good + self.p_costly] = COSTLY
        kinds[u < self.p_good] = GOOD
        anchor = torch.randint(self.num_candidates, shape[:2], generator=generator)
        kinds.scatter_(2, anchor.unsqueeze(-1), GOOD)
        states = torch.randn(*shape, self.hidden_size, generator=generator)
        states[..., 0] = torch.where(kinds == BAD, -2.0, 2.0)
        states[..., 1] = torch.where(kinds == COSTLY, 2.0, -2.0)
        return Prompts(kinds=kinds, states=states)

    @torch.no_grad()
    def rollout(
        self,
        policy: AcceptRejectPolicy,
        prompts: Prompts,
        *,
        samples_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        first_episode_id: int = 0,
    ) -> Rollout:
        """Run `samples_per_prompt` episodes per prompt, all episodes advancing together."""
        prompt = torch.arange(len(prompts.kinds)).repeat_interleave(samples_per_prompt)
        num_episodes = len(prompt)
        token = torch.zeros(num_episodes, dtype=torch.long)
        candidate = torch.zeros(num_episodes, dtype=torch.long)
        step = torch.zeros(num_episodes, dtype=torch.long)
        value = torch.zeros(num_episodes)
        costly = torch.zeros(num_episodes)
        alive = torch.ones(num_episodes, dtype=torch.bool)
        columns: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("episode", "step", "state", "base", "action", "logp", "done")}
        last = self.num_candidates - 1
        while alive.any():
            ep = torch.nonzero(alive).squeeze(-1)
            where = (prompt[ep], token[ep], candidate[ep])
            state, base = prompts.states[where], self.base_logits[candidate[ep]]
            action, logp = policy.act(observe(state, base), deterministic=deterministic, generator=generator)
            # A reject of the second-to-last candidate emits the last one.
            forced = ~action.bool() & (candidate[ep] == last - 1)
            emit = action.bool() | forced
            kind = torch.where(forced, prompts.kinds[prompt[ep], token[ep], last], prompts.kinds[where])
            token_value = torch.where(kind == COSTLY, 1.0 + self.costly_bonus, 1.0)
            value[ep] += emit * torch.where(kind == BAD, -1.0, token_value)
            costly[ep] += emit * (kind == COSTLY).float()
            token[ep] += emit.long()
            candidate[ep] = torch.where(emit, 0, candidate[ep] + 1)
            done = token[ep] == self.num_tokens
            alive[ep[done]] = False
            for name, column in zip(columns, (ep, step[ep].clone(), state, base, action, logp, done)):
                columns[name].append(column)
            step[ep] += 1
        rows = {name: torch.cat(parts) for name, parts in columns.items()}
        order = torch.argsort(rows["episode"] * (self.num_tokens * self.num_candidates + 1) + rows["step"])
        rows = {name: column[order] for name, column in rows.items()}
        done = rows["done"].float()
        returns, costs = value / self.num_tokens, costly / self.num_tokens
        episode = rows["episode"]
        decisions = torch.bincount(episode, minlength=num_episodes)
        transitions = Transitions(
            base_logit=rows["base"],
            next_base_logit=torch.roll(rows["base"], -1, 0) * (1.0 - done),
            episode_decisions=decisions[episode],
            state=rows["state"],
            action=rows["action"],
            reward=done * returns[episode],
            cost=done * costs[episode],
            next_state=torch.roll(rows["state"], -1, 0) * (1.0 - done).unsqueeze(-1),
            done=done,
            logp=rows["logp"],
            episode_id=episode + first_episode_id,
            step=rows["step"],
            prompt_id=prompt[episode] + first_episode_id,
            policy_version=torch.zeros_like(episode),
        )
        return Rollout(transitions=transitions, returns=returns, costs=costs)

    def evaluate(
        self, policy: AcceptRejectPolicy, *, num_episodes: int, seed: int, deterministic: bool = False
    ) -> tuple[float, float]:
        """(mean return, mean cost) of `policy` on fresh prompts."""
        generator = torch.Generator().manual_seed(seed)
        prompts = self.sample_prompts(num_episodes, generator=generator)
        rollout = self.rollout(policy, prompts, generator=generator, deterministic=deterministic)
        return float(rollout.returns.mean()), float(rollout.costs.mean())
