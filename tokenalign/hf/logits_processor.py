"""A trained agent inside `transformers`' `generate`: a logits processor that samples the agent's text distribution.

    processor = AgentLogitsProcessor.from_run("runs/demo-20261207-150000", model)
    out = model.generate(**inputs, max_new_tokens=32, **processor.generate_kwargs())

At every step `generate` hands the processor the step's next-token logits. The processor warps them as the
run's engine did (temperature, top-k, top-p, order: the candidates), takes the context's last hidden state from
the model's own forward (a forward pre-hook on the LM head: its input), scores every candidate in one agent
call, and returns log π(i) at each candidate and −inf elsewhere, with π(i) = p_i·∏_{j<i}(1 − p_j) the agent's
emission distribution (the last candidate takes the remainder). `generate`'s multinomial draw then emits what
the engine's decoding would: one forward per token, batching and the KV cache all `generate`'s own.

Only context-mode agents can run here (`engine.candidate_state=context`): a lookahead agent's state of a
candidate is the LM's state of context + candidate, a forward per candidate that `generate` never runs.

`generate` applies its own temperature / top-k / top-p warpers after user processors, which would warp the
agent's distribution a second time: `generate_kwargs()` turns them off, and the processor refuses to run
behind one that would change its output.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

from tokenalign.agents.chain import BASE_LOGIT_BOUND, emission_log_probs
from tokenalign.config import load_config
from tokenalign.envs.candidate_state import CANDIDATE_STATES, context_states, unit_rms
from tokenalign.envs.candidates import SamplingConfig, propose
from tokenalign.envs.policies import AcceptPolicy, conditioned, is_step_policy, on_device
from tokenalign.eval.agent_source import load_agent, run_config

NEUTRAL_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0,
                    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None}
"""`generate` arguments under which it samples the processor's output as it is (its own warpers off)."""


class AgentLogitsProcessor(LogitsProcessor):
    """See the module docstring. `remove()` detaches the hook from the model."""

    def __init__(self, *, model: PreTrainedModel, policy: AcceptPolicy | Any, sampling: SamplingConfig,
                 preference: Sequence[float] | None = None) -> None:
        """`policy`: a context-mode agent for `model`; `sampling`: the candidate warping it was trained with;
        `preference`: the weights of a preference-conditioned agent."""
        self.sampling = sampling
        self.lm_head = model.get_output_embeddings()
        device = self.lm_head.weight.device
        self.policy = conditioned(on_device(policy, device), preference)
        self._context: torch.Tensor | None = None
        self._hook = self.lm_head.register_forward_pre_hook(self._capture)

    @classmethod
    def from_run(cls, run_dir: str | Path, model: PreTrainedModel, *, preference: Sequence[float] | None = None,
                 beta: float | None = None) -> AgentLogitsProcessor:
        """The agent of a `tokenalign train` run (its latest checkpoint) for `model`, the run's LM, with the run's
        sampling settings (a value-guided agent at `beta`, default its own); refuses an agent trained in lookahead mode."""
        config_path = run_config(run_dir)
        if config_path is None:
            raise FileNotFoundError(f"{str(run_dir)!r} is not a tokenalign run directory (no config.yaml beside "
                                    "checkpoints/); pass runs/<name>-<time>")
        config = load_config(config_path)
        if config.engine.candidate_state != "context":
            raise ValueError(
                f"the agent of {str(run_dir)!r} was trained with engine.candidate_state={config.engine.candidate_state}: "
                "its state of a candidate is the LM's hidden state of context + candidate, a forward per candidate that "
                "generate does not run; train it with engine.candidate_state=context to use it from generate"
            )
        hidden_size = int(model.get_output_embeddings().weight.shape[1])
        state_size = CANDIDATE_STATES["context"].state_size(hidden_size)
        policy = load_agent(run_dir, state_size=state_size, device=model.get_output_embeddings().weight.device, beta=beta)
        return cls(model=model, policy=policy, sampling=config.engine.sampling, preference=preference)

    def generate_kwargs(self) -> dict[str, Any]:
        """`generate` arguments that sample from the agent: this processor, and generate's own warpers off."""
        return {**NEUTRAL_SAMPLING, "logits_processor": LogitsProcessorList([self])}

    def remove(self) -> None:
        """Detach the hook from the model (the processor cannot run afterwards)."""
        self._hook.remove()

    def _capture(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self._context = args[0][:, -1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._refuse_second_warp(inspect.currentframe())
        if self._context is None or self._context.shape[0] != scores.shape[0]:
            raise RuntimeError("the processor saw no forward of its model's LM head for this step: pass it to "
                               "generate of the model it was built for")
        with torch.no_grad():
            return self._emission_scores(scores)

    def _emission_scores(self, scores: torch.Tensor) -> torch.Tensor:
        cand = propose(scores.float(), self.sampling)
        ranks = torch.arange(cand.token_ids.shape[1], device=scores.device).expand_as(cand.token_ids)
        context = unit_rms(self._context.float()).unsqueeze(1).expand(-1, ranks.shape[1], -1)
        states = context_states(context, self.lm_head.weight[cand.token_ids], cand.logp, ranks)
        observation = torch.cat([states, cand.base_logit.unsqueeze(-1)], dim=-1)
        if is_step_policy(self.policy):
            logit = self.policy.step_accept_logits(observation, cand.count).float()
        else:
            logit = self.policy.accept_logit(observation.flatten(0, 1)).float().view(ranks.shape)
        log_pi = emission_log_probs(logit.clamp(-BASE_LOGIT_BOUND, BASE_LOGIT_BOUND), cand.count)
        return torch.full_like(scores, float("-inf")).scatter_(1, cand.token_ids, log_pi.to(scores.dtype))

    def _refuse_second_warp(self, frame: Any) -> None:
        """Refuse a warper `generate` runs after this processor (it would warp the agent's distribution again)."""
        caller = frame.f_back.f_locals.get("self") if frame is not None and frame.f_back is not None else None
        if not isinstance(caller, LogitsProcessorList) or not any(p is self for p in caller):
            return
        after = caller[[i for i, p in enumerate(caller) if p is self][0] + 1:]
        for warper in after:
            harmless = (isinstance(warper, TopKLogitsWarper) and warper.top_k >= self.sampling.top_k) or \
                (isinstance(warper, TemperatureLogitsWarper) and warper.temperature == 1.0)
            if not harmless and type(warper).__name__.endswith("Warper"):
                raise ValueError(
                    f"generate would apply {type(warper).__name__} after the agent's processor and warp its distribution "
                    "a second time (the processor owns the run's temperature / top-k / top-p): call "
                    "model.generate(..., **processor.generate_kwargs())"
                )
