"""The end-of-run evaluation a training run writes to summary.json.

On the held-out prompts, side by side: the agent decoding alone (sampled, as the text distribution it is
and is trained as; no reranking), the base LM alone (sampling with the same warping), and best-of-N
sampling of the base LM reranked by the reward. The agent's entry carries its KL per response to the
base LM, best-of-N's its analytic bound. Each entry is a tokenalign.eval.metrics summary: {"reward": {"mean",
"se"}, "cost": {...}, "n", ...}.
"""
from __future__ import annotations

from typing import Any

from tokenalign.config import TrainConfig
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.policies import AcceptPolicy
from tokenalign.envs.task import DecodingTask
from tokenalign.eval.evaluate import evaluate


def evaluate_run(task: DecodingTask, policy: AcceptPolicy, *, config: TrainConfig, num_prompts: int, best_of: int,
                 seed: int) -> dict[str, Any]:
    """{"agent": ..., "base": ..., "best_of_<N>": ...} on the first `num_prompts` held-out prompts."""
    prompts = load_prompts(config.data.test, prompt_field=config.data.prompt_field, seed=config.data.seed)[:num_prompts]
    batch_size = config.rollout.episodes_per_batch
    # A preference-conditioned agent is summarised at equal weights; `tokenalign eval --preference` picks others.
    dim = int(getattr(policy, "preference_dim", 0))
    preference = [1.0 / dim] * dim if dim else None
    return {
        "agent": evaluate(task, "sample", prompts, policy=policy, seed=seed, batch_size=batch_size,
                          preference=preference).summary,
        "base": evaluate(task, "base", prompts, seed=seed, batch_size=batch_size).summary,
        f"best_of_{best_of}": evaluate(task, "best-of-n", prompts, n=best_of, seed=seed, batch_size=batch_size).summary,
    }
