"""`AcceptRejectEnv`: MARA's token-level accept/reject decoding as a single Gymnasium environment."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from tokenalign.agents.chain import BASE_LOGIT_BOUND
from tokenalign.data.prompts import Prompt, prompt_id
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.task import DecodingTask, ModelArg, ScorersArg

if TYPE_CHECKING:  # imported when a preference is given, so the unconditioned env needs no objectives package
    from tokenalign.objectives.normalizer import EpisodeNormalizer

_MAX_PROMPT_DRAWS = 100
ENV_ARGUMENTS = ("model", "prompts", "scorers", "sampling", "max_new_tokens", "candidate_block", "candidate_state", "device",
                 "render_mode", "preference", "max_decisions", "step_candidates")


def check_preference(value: Any, names: Sequence[str]) -> np.ndarray:
    """`value` as weights w on the probability simplex, one per scorer in `names` (float32, summing to 1).

    Raises one ValueError naming `preference` unless `value` is len(names) finite, non-negative numbers
    with a positive sum.
    """
    expected = (f"preference must be {len(names)} non-negative weights, one per scorer in order {list(names)}, "
                f"with a positive sum (e.g. {[round(1 / len(names), 3)] * len(names)})")
    try:
        w = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}; got {value!r}") from None
    if w.shape != (len(names),) or not np.isfinite(w).all() or bool((w < 0).any()) or not w.sum() > 0:
        raise ValueError(f"{expected}; got {value!r}")
    return (w / w.sum()).astype(np.float32)


def check_render_mode(render_mode: str | None, supported: Sequence[str]) -> None:
    """Refuse a render mode the env cannot draw. A TypeError, as for an argument the env does not take: that
    is what Stable-Baselines3's `make_vec_env` catches to retry without its default `rgb_array`."""
    if render_mode is not None and render_mode not in supported:
        raise TypeError(f"render_mode {render_mode!r} is not supported; use one of {list(supported)} or None")


RESET_OPTIONS = ("prompt", "preference")


def check_options(options: dict[str, Any] | None) -> None:
    """Refuse reset options the env does not know (a typo would otherwise be ignored without a word)."""
    unknown = sorted(set(options or {}) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; the env takes {list(RESET_OPTIONS)}")


def observation_space(state_size: int, preference_dim: int) -> gym.spaces.Box:
    """Box of [candidate state ; π_ref accept logit ; w]: the state unbounded, the logit within
    ±BASE_LOGIT_BOUND, each weight of w in [0, 1] (w absent when dim 0)."""
    low = np.concatenate([np.full(state_size, -np.inf), [-BASE_LOGIT_BOUND], np.zeros(preference_dim)])
    high = np.concatenate([np.full(state_size, np.inf), [BASE_LOGIT_BOUND], np.ones(preference_dim)])
    low, high = low.astype(np.float32), high.astype(np.float32)
    return gym.spaces.Box(low, high, dtype=np.float32)


def new_normalizer(columns: int) -> EpisodeNormalizer:
    """The `preference` objective's own normaliser of `columns` objective values."""
    from tokenalign.objectives.normalizer import EpisodeNormalizer

    return EpisodeNormalizer(columns)


def preference_rewards(task: DecodingTask, normalizer: EpisodeNormalizer, raw: dict[str, np.ndarray],
                       w: np.ndarray) -> np.ndarray:
    """Σ_i w_i·ẑ_i of n finished episodes with raw scores `raw` (scorer name → (n,)) and weights w (n, P):
    the `preference` objective's reward, v_i = multiplier_i·score_i normalised over the env's finished episodes."""
    terms = task.combiner.terms
    multiplier = np.array([t.multiplier for t in terms], dtype=np.float64)
    values = np.stack([np.asarray(raw[t.scorer.name], dtype=np.float64) for t in terms], axis=1) * multiplier
    z = normalizer(values, np.ones(len(values), dtype=bool))
    return (z * np.asarray(w, dtype=np.float64)).sum(axis=1)


class AcceptRejectEnv(gym.Env):
    """Accept or reject the candidate tokens a frozen LLM proposes, one at a time.

    ## Description
    At each generation step the LLM's next-token distribution is warped (temperature, top-k, top-p) and
    its survivors are shown to the agent in order, highest probability first (MARA, "Token-level Accept
    or Reject"). Accepting a candidate emits it; rejecting moves on to the next candidate. The last
    candidate of a step is never asked about: once every other is rejected it is emitted (so a step with
    a single survivor emits it without asking). The episode's text is scored by reward (and cost) models
    when it ends.

    An agent that accepts candidate i with probability π_ref_i = q_i / Σ_{j≥i} q_j, q the warped
    probabilities, decodes exactly as sampling from the LLM: the observation carries π_ref's accept logit
    so that an agent can start there (tokenalign's agents are that logit plus a learned residual) and so
    that a learner can measure the KL of its text to the LLM's, a sum of Bernoulli KLs to π_ref.

    ## Observation Space
    `Box(low, high, (S + 1,), float32)`: `[s ; l_ref]`, the candidate's state s (unbounded), then π_ref's
    accept logit l_ref = log q_i − log Σ_{j>i} q_j of the candidate (within ±30). What s is depends on
    `candidate_state` (`env.engine.state_size` is S):
    - `"lookahead"` (MARA's): S = H, the LLM's last-layer hidden state at the last position of context +
      candidate (what the LLM "thinks" right after the candidate). Each candidate looked at costs the LLM
      one query token.
    - `"context"`: S = 2H + 2, `[h_t ; e_c ; log q_c ; log(1 + rank)]`: the context's last hidden state and
      the candidate's output embedding (its LM-head row), each scaled to unit root-mean-square, the
      candidate's warped log-probability and its rank (0 = first shown). All of it comes from the forward
      that gave the step's logits: one LLM forward per emitted token, like sampling.
    After the episode ends the observation is all zeros.

    With `preference`, `Box(low, high, (S + 1 + P,), float32)`: `[s ; l_ref ; w]`, the episode's
    preference weights w (P = number of scorers, each in [0, 1], summing to 1) appended, as a RiC
    preference-conditioned agent sees them. After the episode ends the first part is zeros and w stays:
    `[0, …, 0 ; w]`.

    ## Action Space
    `Discrete(2)`: 0 = reject the candidate, 1 = accept it.

    ## Reward
    0 for every decision but the last, which carries the final sequence reward as MARA combines it:
    Σ_k multiplier_k · score_k − baseline over the configured scorers (the demo: 2 × VADER sentiment
    − 1 × profanity probability). The env adds no KL term: an outside agent with accept logit l pays
    KL(σ(l) ‖ σ(l_ref)) per decision against the observation's l_ref if it wants tokenalign's KL to the
    base LM (`tokenalign.envs.episode.bernoulli_kl`); MARA's shaping needs every candidate's P(accept), so
    only the rollout actors, which own the agent, apply it.

    With `preference` the final reward is instead that of the `preference` objective (RiC's linear
    scalarisation): Σ_i w_i · z_i over the scorers, where z_i = (v_i − μ_i) / σ_i z-normalises
    v_i = multiplier_i · score_i with the running mean μ and population standard deviation σ of v over the
    env's finished episodes, this one included (`env.preference_normalizer`, the `preference` objective's `EpisodeNormalizer`); until two
    episodes have finished, z_i = v_i. The configured baseline is not used (normalising centres each v_i).

    ## Cost
    `info["cost"]` is 0 until the last decision, which carries the sequence cost (sum of the cost-role
    scorers' raw scores; higher is less safe), as Safety-Gymnasium reports costs.

    ## Episode End
    Terminated when the LLM's end-of-text token is emitted; truncated after `max_new_tokens` tokens, or after
    `max_decisions` decisions (the text so far is scored; info `truncated_by: "max_decisions"`). Gymnasium's
    own `make(..., max_episode_steps=N)` cuts the episode in a TimeLimit wrapper that never lets the env
    score it: that step's info says `scored: False` (every step's does, but the one that scored the text).

    ## Info
    `text` (response so far), `token_id` and `rank` of the decided candidate, `num_candidates` of the
    step, `emitted` (whether the decision emitted a token), `num_tokens`, `cost`, `scored` (whether this
    step's reward carries the text's scores), and at the end `reward_terms` (each scorer's raw score) and
    `reward` / `cost` apart for Lagrangian learners.
    With `preference`, every info also holds `preference`, the episode's w (float32 array of P).
    With `step_candidates`, every info of an unfinished episode also holds `step_observations`, (n, S + 1 [+ P])
    float32: the observations of all n candidates of the step the returned observation belongs to, rank order
    (the returned observation is row `cursor`, the candidate under decision). An agent whose accept logit of a
    candidate depends on the whole step reads them: a value-guided head accepts the candidate under decision
    with `policy.step_accept_logits(step_observations[None], torch.tensor([n]))[0, cursor]`, and so emits
    π ∝ q·exp(Q/β) over the step (`agents/value_guided.py`); `cursor` is in the info too.

    ## Arguments
    Keywords, or (RLlib's convention) one dict of them as the only positional argument.
    - `model`: `"builtin:tiny"` (default, bundled), a local HF directory, or a `(model, tokenizer)` pair.
    - `prompts`: a dataset spec (`"builtin:demo-train"` default; JSON/JSONL/Parquet paths,
      `name:proportion:path` mixes) or a list of prompt strings.
    - `scorers`: a `RewardConfig`, or a list of scorer specs (`"vader"`, `"profanity,role=cost,multiplier=-1"`,
      `ScorerConfig`s or dicts); default: the demo's 2:1 VADER / profanity.
    - `sampling`: `SamplingConfig` or dict (top_k 40, top_p 0.95, temperature 0.8, order).
    - `max_new_tokens`: episode length cap in tokens (default 32).
    - `candidate_block`: lookahead mode, candidates whose states are computed per forward (0 = all).
    - `candidate_state`: `"lookahead"` (default, MARA's) or `"context"` (see Observation Space).
    - `device`: torch device of the LLM.
    - `render_mode`: `"ansi"` returns the prompt and text so far (any other mode is a TypeError).
    - `max_decisions`: truncate (and score) after this many decisions (default None: no limit).
    - `step_candidates`: every step's candidates in the info (see Info; context states only: in lookahead mode
      each candidate's state costs a forward of its own).
    - `preference`: None (default, unconditioned) or the default preference weights w, one non-negative
      weight per scorer in the order of `scorers` (e.g. `[0.5, 0.5]` for the demo's VADER / profanity);
      normalised to sum 1. Makes the env preference-conditioned (see Observation Space and Reward);
      `preference_dim` is then P, else 0.

    `reset(options={"prompt": "..."})` decodes that prompt; otherwise a prompt is drawn with `np_random`.
    `reset(options={"preference": [...]})` sets w for that episode (checked as the argument is); otherwise
    the episode uses the constructor's w. Without `preference` in the constructor the option is an error.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        model: ModelArg = "builtin:tiny",
        prompts: str | Sequence[str] = "builtin:demo-train",
        scorers: ScorersArg = None,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        max_new_tokens: int = 32,
        candidate_block: int = 8,
        candidate_state: str = "lookahead",
        device: str = "cpu",
        render_mode: str | None = None,
        preference: Sequence[float] | None = None,
        max_decisions: int | None = None,
        step_candidates: bool = False,
    ) -> None:
        if config:  # RLlib's convention: the env class called with one dict (an EnvContext) of the arguments
            unknown = sorted(set(config) - set(ENV_ARGUMENTS))
            if unknown:
                raise TypeError(f"unknown AcceptRejectEnv argument(s) {unknown} in its config dict; the arguments "
                                f"are {list(ENV_ARGUMENTS)}")
            self.__init__(**{**dict(model=model, prompts=prompts, scorers=scorers, sampling=sampling,
                                    max_new_tokens=max_new_tokens, candidate_block=candidate_block,
                                    candidate_state=candidate_state, device=device,
                                    render_mode=render_mode, preference=preference, max_decisions=max_decisions,
                                    step_candidates=step_candidates),
                             **config})
            return
        check_render_mode(render_mode, self.metadata["render_modes"])
        if max_decisions is not None and (not isinstance(max_decisions, int) or max_decisions < 1):
            raise ValueError(f"max_decisions must be a positive int or None, got {max_decisions!r}")
        self.max_decisions = max_decisions
        if step_candidates and candidate_state != "context":
            raise ValueError("step_candidates needs candidate_state='context': a lookahead state of every candidate of "
                             "a step costs one LLM forward each")
        self.step_candidates = bool(step_candidates)
        self.task = DecodingTask.build(model=model, prompts=prompts, scorers=scorers, sampling=sampling,
                                       max_new_tokens=max_new_tokens, candidate_block=candidate_block,
                                       candidate_state=candidate_state, device=device)
        self.engine = self.task.engine
        self.render_mode = render_mode
        self.scorer_names = [t.scorer.name for t in self.task.combiner.terms]
        self.preference = None if preference is None else check_preference(preference, self.scorer_names)
        self.preference_dim = 0 if self.preference is None else len(self.scorer_names)
        self.preference_normalizer = new_normalizer(self.preference_dim) if self.preference_dim else None
        self.observation_space = observation_space(self.task.state_size, self.preference_dim)
        self.action_space = gym.spaces.Discrete(2)
        self._batch = None
        self._prompt: Prompt | None = None
        self._w = self.preference
        self._decisions = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        check_options(options)
        fixed = (options or {}).get("prompt")
        self._w = self._episode_preference(options)
        self._decisions = 0
        for _ in range(_MAX_PROMPT_DRAWS):
            self._prompt = Prompt(id=prompt_id(fixed), text=fixed, source="options") if fixed is not None else self.task.pick_prompt(self.np_random)
            self._batch = self.engine.start([self._prompt.text])
            if bool(self._batch.awaiting[0]):
                return self._observation(), self._info(decided=None, emitted=False)
            if fixed is not None:
                break
        raise RuntimeError(
            "the LLM finished the prompt without a single step with two or more candidates, so there is no "
            "decision to make; raise top_k / top_p / temperature or max_new_tokens, or pick another prompt"
        )

    def step(self, action):
        if self._batch is None or bool(self._batch.done[0]):
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (reject) or 1 (accept), got {action!r}")
        batch = self._batch
        decided = (int(batch.cursor[0]), int(batch.cand.token_ids[0, batch.cursor[0]]), int(batch.cand.count[0]))
        emitted = bool(self.engine.apply(batch, torch.tensor([int(action)]))[0])
        self._decisions += 1
        info = self._info(decided=decided, emitted=emitted)
        reward, cost = 0.0, 0.0
        finished = bool(batch.done[0])
        if not finished and self.max_decisions is not None and self._decisions >= self.max_decisions:
            batch.done[0] = finished = True
            info["truncated_by"] = "max_decisions"
            info.pop("step_observations", None)  # the step it showed will not be decided
            info.pop("cursor", None)
        info["scored"] = finished
        if finished:
            scores = self.task.score([self._prompt], [info["text"]])
            reward, cost = float(scores.final[0]), float(scores.cost[0])
            info.update(reward_terms={k: float(v[0]) for k, v in scores.raw.items()},
                        reward=float(scores.reward[0]))
            if self._w is not None:
                reward = float(preference_rewards(self.task, self.preference_normalizer, scores.raw, self._w[None])[0])
        info["cost"] = cost
        eos = finished and batch.response_tokens(0)[-1:] == [self.engine.eos_token_id]
        return self._observation(), reward, finished and eos, finished and not eos, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._batch is None:
            return None
        return f"{self._prompt.text}{self._text()}"

    def _episode_preference(self, options: dict[str, Any] | None) -> np.ndarray | None:
        """The w of the episode `reset(options=...)` starts: the option's, else the constructor's."""
        value = (options or {}).get("preference")
        if value is None:
            return self.preference
        if self.preference is None:
            raise ValueError("reset(options={'preference': ...}) needs a preference-conditioned env; construct it "
                             f"with preference=[...], one weight per scorer {self.scorer_names}")
        return check_preference(value, self.scorer_names)

    def _observation(self) -> np.ndarray:
        if bool(self._batch.done[0]):
            obs = np.zeros(self.task.state_size + 1, dtype=np.float32)
        else:
            obs = self.engine.observe(self._batch)[0].cpu().numpy().astype(np.float32)
        if self._w is None:
            return obs
        return np.concatenate([obs, self._w]).astype(np.float32)

    def _text(self) -> str:
        return self.engine.tokenizer.decode(self._batch.response_tokens(0), skip_special_tokens=True)

    def _info(self, *, decided: tuple[int, int, int] | None, emitted: bool) -> dict[str, Any]:
        rank, token_id, count = decided if decided is not None else (-1, -1, int(self._batch.cand.count[0]))
        info = dict(prompt=self._prompt.text, text=self._text(), token_id=token_id, rank=rank,
                    num_candidates=count, emitted=emitted, num_tokens=int(self._batch.n_new[0]), cost=0.0)
        if self._w is not None:
            info["preference"] = self._w.copy()
        if self.step_candidates and not bool(self._batch.done[0]):
            info["cursor"] = int(self._batch.cursor[0])
            info["step_observations"] = self._step_observations()
        return info

    def _step_observations(self) -> np.ndarray:
        """(n, S + 1 [+ P]) observations of the current step's n candidates, rank order."""
        count = int(self._batch.cand.count[0])
        ranks = torch.arange(count, device=self.engine.device)
        obs = self.engine.observation(self._batch, torch.zeros_like(ranks), ranks).cpu().numpy().astype(np.float32)
        if self._w is None:
            return obs
        return np.concatenate([obs, np.broadcast_to(self._w, (count, len(self._w)))], axis=1).astype(np.float32)
