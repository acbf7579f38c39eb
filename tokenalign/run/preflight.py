"""Checks of a run's config against the world, before a run directory is written or an actor starts.

`load_config` checks a config on its own (types, bounds, scorer specs) and `feasibility` whether its settings
together can make progress (buffer sizes, rate limiter, test prompts, the cluster). What neither sees is
whether the LM directory is readable and long enough for `engine.max_new_tokens`, whether `python:` scorers
import and return numbers, whether learner.init_from holds an agent the learner can start from, whether external Redis servers answer, and whether the buffer backend can serve
actors in other processes. Each of those would otherwise fail minutes into a run, inside an actor, as a
remote traceback; here each is one ConfigError or ScorerError naming the key and the fix.
"""
from __future__ import annotations

import json

import redis
from transformers import AutoConfig

from tokenalign.buffers.redis_client import connect, public_url, redis_password
from tokenalign.config import TrainConfig
from tokenalign.core.parsing import ConfigError
from tokenalign.envs.candidate_state import CANDIDATE_STATES
from tokenalign.eval.agent_source import load_agent
from tokenalign.eval.errors import EvalError
from tokenalign.learners import learner_class
from tokenalign.lm.loader import resolve_lm_path
from tokenalign.rewards.factory import make_scorer
from tokenalign.run.feasibility import check_cluster, check_feasible

SAMPLE_PROMPTS = ["How are you today?"]
SAMPLE_RESPONSES = ["I am fine, thank you."]


def preflight(config: TrainConfig) -> None:
    """Raise one clear error for the first problem a run with `config` would meet; return if there is none."""
    check_feasible(config)
    check_lm(config)
    check_cluster(config)
    check_python_scorers(config)
    check_init_from(config)
    if not config.learner.contract.offline:
        check_buffer(config)


def check_lm(config: TrainConfig) -> None:
    """The LM directory has a readable config.json whose positions leave room for a prompt."""
    try:
        model_dir = resolve_lm_path(config.lm.path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"lm.path: {err}") from None
    try:
        lm_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"lm.path: {model_dir / 'config.json'} is not a readable JSON model config ({err}); "
                          "save the model again with save_pretrained") from None
    text = lm_config.get("text_config", lm_config)  # multimodal configs nest the LM's
    positions = text.get("max_position_embeddings") or text.get("n_positions")
    if positions is not None and config.engine.max_new_tokens >= positions:
        raise ConfigError(f"engine.max_new_tokens={config.engine.max_new_tokens} leaves no room for a prompt in the "
                          f"model's {positions} positions; set engine.max_new_tokens below {positions}")


def check_init_from(config: TrainConfig) -> None:
    """learner.init_from holds an agent this run's learner can start from: its kind, input size and widths."""
    path = config.learner.init_from
    if path is None:
        return
    hidden = int(AutoConfig.from_pretrained(resolve_lm_path(config.lm.path), local_files_only=True).hidden_size)
    try:
        agent = load_agent(path, state_size=CANDIDATE_STATES[config.engine.candidate_state].state_size(hidden))
    except (FileNotFoundError, EvalError, ValueError) as err:
        raise ConfigError(f"learner.init_from: {err}") from None
    name, wanted = config.learner.name, learner_class(config.learner.name).policy_class
    if type(agent) is not wanted:
        raise ConfigError(f"learner.init_from={path} holds an agent of kind {type(agent).__name__}, but learner.name={name} "
                          f"trains a {wanted.__name__}: start it from an agent of its kind (bon_distill, dpo or an RL run's for "
                          "an accept/reject agent)")
    widths = getattr(config.learner.params, "widths", None)
    if widths is not None and tuple(agent.widths) != tuple(widths):
        raise ConfigError(f"learner.init_from={path} holds an agent of widths {list(agent.widths)}, learner.params.widths "
                          f"is {list(widths)}: set learner.params.widths={list(agent.widths)}")


def check_python_scorers(config: TrainConfig) -> None:
    """`python:` scorers import and score a sample pair, here, before any actor imports them (ScorerError names
    the scorer: a missing module or function, an exception, or a return that is not one float per response)."""
    for scorer in config.reward.scorers:
        if scorer.kind == "python":
            make_scorer(scorer).score(SAMPLE_PROMPTS, SAMPLE_RESPONSES)


def check_buffer(config: TrainConfig) -> None:
    """Rollout actors write from their own processes: a memory buffer cannot serve them, external Redis
    servers must answer (a wrong password or a closed port is one error, not 30 s of retries)."""
    buffer = config.buffer
    if buffer.backend == "memory":
        raise ConfigError("buffer.backend=memory keeps the buffer inside one process, but rollout actors write from "
                          "their own: use buffer.backend=redis (embedded servers start by themselves)")
    for i, url in enumerate(buffer.redis_urls):
        try:
            connect(url, password=redis_password()).ping()
        except redis.AuthenticationError:
            raise ConfigError(f"buffer.redis_urls[{i}] ({public_url(url)}) refused the password; give the right one "
                              "in the URL or in TOKENALIGN_REDIS_PASSWORD") from None
        except (redis.ConnectionError, redis.TimeoutError, ValueError) as err:
            raise ConfigError(f"buffer.redis_urls[{i}] ({public_url(url)}) does not answer ({err}); start the server "
                              "or fix the URL (or leave buffer.redis_urls empty for embedded servers)") from None
