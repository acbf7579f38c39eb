"""`AcceptRejectVectorEnv`: N accept/reject episodes over ONE batched decoding engine.

Sub-environments are rows of one engine batch, so a step costs at most one batched forward for all of
them, however far apart they are. A finished row is restarted with a fresh prompt on the next step
(Gymnasium's NEXT_STEP autoreset): its cache row is masked out and the new prompt is committed in place.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from tokenalign.data.prompts import Prompt, prompt_id
from tokenalign.envs.accept_reject import (
    check_options,
    check_preference,
    check_render_mode,
    new_normalizer,
    observation_space,
    preference_rewards,
)
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.task import DecodingTask, ModelArg, ScorersArg

_MAX_PROMPT_DRAWS = 100


class AcceptRejectVectorEnv(VectorEnv):
    """`num_envs` copies of `AcceptRejectEnv` stepped together; the same arguments, plus `num_envs`.

    Observations, actions, rewards and `info["cost"]` are as in `AcceptRejectEnv`, batched along the
    first axis. `info` also holds per-row `emitted`, `rank` and `num_tokens`.

    With `preference` (the default w, one weight per scorer) each row is preference-conditioned as
    `AcceptRejectEnv` is: its observation is `[candidate state ; π_ref accept logit ; w_row]` (`[0, …, 0 ; w_row]` on the step that
    ends its episode), its final reward Σ_i w_row,i · z_i, with one running normaliser
    (`preference_normalizer`) over every row's finished episodes (the rows ending on a step are counted
    together, then normalised), and `info["preference"]` is the (num_envs, P) weights. `reset(options=
    {"preference": w})` sets the weights of all rows: one w (P,) for every row or one per row
    (num_envs, P); otherwise every row gets the constructor's w. A row keeps its w when it autoresets.

    `reset(options={"prompt": p})` decodes prompt p in every row, or one prompt per row (a list of
    num_envs); rows that autoreset later draw prompts as usual. `render_mode="ansi"`: `render()` gives each
    row's prompt and text so far.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["ansi"]}

    def __init__(
        self,
        *,
        num_envs: int = 4,
        model: ModelArg = "builtin:tiny",
        prompts: str | Sequence[str] = "builtin:demo-train",
        scorers: ScorersArg = None,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        max_new_tokens: int = 32,
        candidate_block: int = 8,
        candidate_state: str = "lookahead",
        device: str = "cpu",
        preference: Sequence[float] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.task = DecodingTask.build(model=model, prompts=prompts, scorers=scorers, sampling=sampling,
                                       max_new_tokens=max_new_tokens, candidate_block=candidate_block,
                                       candidate_state=candidate_state, device=device)
        self.engine = self.task.engine
        self.num_envs = num_envs
        self.scorer_names = [t.scorer.name for t in self.task.combiner.terms]
        self.preference = None if preference is None else check_preference(preference, self.scorer_names)
        self.preference_dim = 0 if self.preference is None else len(self.scorer_names)
        self.preference_normalizer = new_normalizer(self.preference_dim) if self.preference_dim else None
        self.single_observation_space = observation_space(self.task.state_size, self.preference_dim)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._batch = None
        self._prompts: list[Prompt] = []
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._w = None if self.preference is None else np.tile(self.preference, (num_envs, 1))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        check_options(options)
        self._w = self._row_preferences(options)
        self._prompts = self._row_prompts(options)
        self._batch = self.engine.start([p.text for p in self._prompts])
        stuck = ~self._batch.awaiting.cpu().numpy()
        if (options or {}).get("prompt") is not None and stuck.any():
            raise ValueError(f"prompt(s) {[self._prompts[r].text for r in np.flatnonzero(stuck)]} leave the agent no "
                             "decision (the LLM finished them without a step of two or more candidates); pick others")
        self._restart(stuck)
        self._autoreset[:] = False
        return self._observations(), ({} if self._w is None else {"preference": self._w.copy()})

    def step(self, actions):
        if self._batch is None:
            raise RuntimeError("step() called before reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.isin(actions, (0, 1)).all():
            raise ValueError(f"actions must be {self.num_envs} values in {{0, 1}}, got {actions!r}")
        batch = self._batch
        ranks = batch.cursor.cpu().numpy().copy()
        emitted = self.engine.apply(batch, torch.as_tensor(actions, device=self.engine.device)).cpu().numpy()
        finished = batch.done.cpu().numpy() & ~self._autoreset

        rewards = np.zeros(self.num_envs, dtype=np.float64)
        costs = np.zeros(self.num_envs, dtype=np.float64)
        if finished.any():
            rows = np.flatnonzero(finished)
            scores = self.task.score([self._prompts[r] for r in rows], [self._text(r) for r in rows])
            rewards[rows], costs[rows] = scores.final, scores.cost
            if self._w is not None:
                rewards[rows] = preference_rewards(self.task, self.preference_normalizer, scores.raw, self._w[rows])
        eos = np.array([finished[r] and batch.response_tokens(r)[-1:] == [self.engine.eos_token_id]
                        for r in range(self.num_envs)])
        n_tokens = batch.n_new.cpu().numpy().copy()

        if self._autoreset.any():
            self._restart(self._autoreset)
        self._autoreset = finished
        infos = {"cost": costs, "emitted": emitted, "rank": np.where(emitted | ~finished, ranks, -1), "num_tokens": n_tokens}
        if self._w is not None:
            infos["preference"] = self._w.copy()
        return self._observations(), rewards, eos, finished & ~eos, infos

    def _restart(self, rows: np.ndarray) -> None:
        """Restart `rows` with fresh prompts until each awaits a decision."""
        for _ in range(_MAX_PROMPT_DRAWS):
            todo = np.flatnonzero(rows)
            if todo.size == 0:
                return
            for r in todo:
                self._prompts[r] = self.task.pick_prompt(self.np_random)
            self.engine.restart_rows(self._batch, torch.as_tensor(todo, device=self.engine.device),
                                     [self._prompts[r].text for r in todo])
            rows = rows & ~self._batch.awaiting.cpu().numpy()
        raise RuntimeError("no prompt in the set leaves the agent a decision to make; raise top_k / top_p / temperature")

    def _observations(self) -> np.ndarray:
        obs = self.engine.observe(self._batch).cpu().numpy().astype(np.float32)
        obs[self._batch.done.cpu().numpy()] = 0.0
        if self._w is None:
            return obs
        return np.concatenate([obs, self._w], axis=1).astype(np.float32)

    def render(self) -> list[str] | None:
        if self.render_mode != "ansi" or self._batch is None:
            return None
        return [f"{self._prompts[r].text}{self._text(r)}" for r in range(self.num_envs)]

    def _row_prompts(self, options: dict[str, Any] | None) -> list[Prompt]:
        """Each row's prompt for `reset(options=...)`: the option's (one for all rows, or one per row), else drawn."""
        value = (options or {}).get("prompt")
        if value is None:
            return [self.task.pick_prompt(self.np_random) for _ in range(self.num_envs)]
        texts = [value] * self.num_envs if isinstance(value, str) else list(value)
        if len(texts) != self.num_envs or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"reset(options={{'prompt': ...}}) takes one prompt string or a list of {self.num_envs} "
                             f"(one per env), got {value!r}")
        return [Prompt(id=prompt_id(t), text=t, source="options") for t in texts]

    def _row_preferences(self, options: dict[str, Any] | None) -> np.ndarray | None:
        """Each row's w for the episodes `reset(options=...)` starts: the option's, else the constructor's."""
        value = (options or {}).get("preference")
        if value is None:
            return None if self.preference is None else np.tile(self.preference, (self.num_envs, 1))
        if self.preference is None:
            raise ValueError("reset(options={'preference': ...}) needs a preference-conditioned env; construct it "
                             f"with preference=[...], one weight per scorer {self.scorer_names}")
        rows = np.asarray(value, dtype=object)
        if rows.ndim == 2 and len(rows) != self.num_envs:
            raise ValueError(f"preference has {len(rows)} rows for {self.num_envs} envs; give one w, or one per env")
        if rows.ndim == 2:
            return np.stack([check_preference(list(row), self.scorer_names) for row in rows])
        return np.tile(check_preference(value, self.scorer_names), (self.num_envs, 1))

    def _text(self, row: int) -> str:
        return self.engine.tokenizer.decode(self._batch.response_tokens(row), skip_special_tokens=True)
