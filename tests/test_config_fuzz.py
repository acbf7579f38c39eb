"""Config fuzzing: any override of any field, however malformed, is accepted or refused with one line naming it.

Hypothesis draws a field of every section (every learner's and objective's params included, with the name
that selects them), and a value that is of the wrong type, out of range, empty, huge, NaN or infinite, an
unknown key or name, or a malformed spec string. `load_config` and the checks a run makes before its run
directory exists (`run/preflight.py`, without its Redis ping) must either accept it or raise ConfigError
with one line that names the key: never another exception, never a traceback's worth of text. Every bug it
found is kept below as a regular test.
"""
from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenalign.config import TrainConfig, load_config
from tokenalign.core.parsing import ConfigError
from tokenalign.learners import config_class, learner_names
from tokenalign.objectives.base import objective_config_class, objective_names
from tokenalign.run.feasibility import check_feasible
from tokenalign.run.preflight import check_lm


def leaf_keys(cls: type, prefix: str) -> list[str]:
    """Dotted keys of every leaf field of dataclass `cls` (nested dataclasses walked into)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], key)
        elif f.name != "params":
            keys.append(key)
    return keys


SECTION_KEYS = [k.lstrip(".") for k in leaf_keys(TrainConfig, "")]
LEARNER_KEYS = [(f"learner.name={name}", f"learner.params.{f.name}")
                for name in learner_names() for f in dataclasses.fields(config_class(name))]
OBJECTIVE_KEYS = [(f"objective.name={name}", f"objective.params.{f.name}")  # with PPO, which takes every objective
                  for name in objective_names() for f in dataclasses.fields(objective_config_class(name))]
TARGETS = [(None, key) for key in SECTION_KEYS] + LEARNER_KEYS + OBJECTIVE_KEYS

BAD_VALUES = [
    "abc", "''", "[]", "{}", "[1, 2]", "{a: 1}", "true", "null", "0", "-1", "-0.5", "1", "2",
    "1000000000000000000", "-1000000000000000000", "1e400", "1.0e+300", ".nan", ".inf", "-.inf", "0.0",
    "[abc]", "[1.5]", "[null]", "[[]]", "'1'", "'-3'", "3.7", "'python:'", "'python:nomodule'", "'python:a:b:c'",
    "'head:'", "'vader,'", "'vader,role='", "'vader,multiplier=nan'", "'vader,multiplier=1e400'", "',,,'",
    "'builtin:'", "'builtin:nosuch'", "'a:b:c'", "'a:0.5:'", "'redis://'", "'redis://127.0.0.1:1'",
    "['vader', 'nokind']", "['vader,role=cost,multiplier=-inf']", "'\\u0000'", "'  '", "!!binary aGk=",
    "[vader, [1]]", "'auto'", "'cuda:99'",
]
UNKNOWN = ["bogus", "name_", "Params", "1", ""]


@st.composite
def overrides(draw) -> list[str]:
    prefix, key = draw(st.sampled_from(TARGETS))
    if draw(st.integers(0, 9)) == 0:  # an unknown key beside the real ones
        key = key.rsplit(".", 1)[0] + "." + draw(st.sampled_from(UNKNOWN))
    value = draw(st.sampled_from(BAD_VALUES))
    if prefix and prefix.startswith("objective."):
        return ["learner.name=ppo", prefix, f"{key}={value}"]
    if prefix == "learner.name=dpo":  # a pair learner needs pairs
        return [prefix, "data.pairs=[builtin:demo-prefs]", f"{key}={value}"]
    return ([prefix] if prefix else []) + [f"{key}={value}"]


def named(message: str, override: str) -> bool:
    """The message names the overridden key: the key itself, its list item, or the override as written."""
    key = override.split("=", 1)[0]
    return key in message or override in message or key.rsplit(".", 1)[0] + "[" in message


def load_and_check(argv: list[str]) -> None:
    config = load_config(None, argv)
    check_feasible(config)
    check_lm(config)


@settings(max_examples=600, deadline=None, derandomize=True,  # the same 600 in CI: a failure reproduces
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(overrides())
def test_any_malformed_override_is_accepted_or_one_line_naming_its_key(argv):
    try:
        load_and_check(argv)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message, (argv, message)
        assert named(message, argv[-1]), (argv, message)


def test_the_fuzz_reaches_every_section_learner_and_objective():
    sections = {key.split(".")[0] for _, key in TARGETS}
    assert sections == {f.name for f in dataclasses.fields(TrainConfig)}
    assert {p.split("=")[1] for p, _ in LEARNER_KEYS} == set(learner_names())
    assert len(TARGETS) > 100


# What the fuzz found, kept as regular tests.
@pytest.mark.parametrize("argv, message", [
    (["learner.params.future_weight=-1"], r"^learner\.params\.future_weight must be ≥ 0, got -1\.0$"),
    (["learner.params.lr=0"], r"^learner\.params\.lr must be > 0, got 0\.0$"),
    (["learner.name=rloo_lagrangian", "learner.params.fail_prob=0"], r"^learner\.params\.fail_prob δ must be in \(0, 1\)"),
    (["learner.name=ppo", "learner.params.widths=[]"], r"^learner\.params\.widths must be a non-empty sequence"),
    (["learner.name=ppo_lagrangian", "learner.params.lambda_init=1.0e+300"],
     r"^learner\.params\.lambda_max must be ≥ learner\.params\.lambda_init"),
    (["learner.name=ppo", "objective.name=hierarchical", "objective.params.holistic_mean=0"],
     r"^objective\.params\.holistic_std and objective\.params\.holistic_mean go together"),
    (["learner.name=dpo", "data.pairs=[builtin:demo-prefs]", "learner.params.margin_max=-1"],
     r"exceeds learner\.params\.margin_max \(-1\.0\)"),
    (["learner.name=dpo", "data.pairs=[builtin:demo-prefs]", "learner.params.kl_target=1"],
     r"^learner\.params\.kl_target must be null for dpo"),
    (["learner.params.kl_coef=0.0"], r"^learner\.params\.kl_coef is value_guided's tilt temperature"),
    (["engine.sampling.top_p=0"], r"^engine\.sampling\.top_p must be in \(0, 1\], got 0\.0$"),
    (["engine.sampling.top_k=0"], r"^engine\.sampling\.top_k must be >= 1, got 0$"),
    (["run.ray_address=abc"], r"^run\.ray_address is 'abc'; give host:port, ray://host:port or auto"),
    (["data.prompt_field=abc"], r"^data\.test \(data\.prompt_field=abc\): .*test\.jsonl:1: no field 'abc'"),
    (["data.seed=-1"], r"^data\.seed must be ≥ 0, got -1$"),
    (["run.seed=-1"], r"^run\.seed must be ≥ 0, got -1$"),
    (["learner.params.lr=.nan"], r"^learner\.params\.lr must be a finite number, got nan"),
    (["run.max_minutes=.inf"], r"^run\.max_minutes must be a finite number, got inf \(null where the key allows no limit\)"),
    (["learner.name=sac", "learner.params.batch_size=1000000000000000000"],
     r"^learner\.params\.learning_starts_factor × learner\.params\.batch_size waits for 64000000000000000001"),
])
def test_found_by_the_fuzz(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_and_check(argv)
