"""Scorer configs and their compact strings, the lexical demo scorers, and user python scorers."""
from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

from tokenalign.rewards import Scorer, ScorerConfig, ScorerError, make_scorer, parse_scorer_spec

KIND = ["a kind reply, thank you, this is wonderful", "you are a damn idiot and I hate this shit", ""]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of scoring functions, as a user would write one."""
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import math

        def length(prompts, responses):
            return [float(len(r)) for r in responses]

        def too_few(prompts, responses):
            return [1.0]

        def not_numbers(prompts, responses):
            return ["high"] * len(responses)

        def nan(prompts, responses):
            return [math.nan] * len(responses)

        def numeric_strings(prompts, responses):
            return ["1.5"] * len(responses)

        def raises(prompts, responses):
            raise KeyError("label")

        class Scores:
            @staticmethod
            def prompt_length(prompts, responses):
                return [len(p) for p in prompts]

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_vader_rewards_positive_sentiment():
    scorer = make_scorer("vader")
    scores = scorer.score(["q"] * 3, KIND)
    assert isinstance(scorer, Scorer) and scorer.name == "vader"
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0


def test_profanity_costs_profane_responses():
    scores = make_scorer("profanity").score(["q"] * 3, KIND)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert scores[1] > 0.9 and scores[0] < 0.2
    assert ((scores >= 0) & (scores <= 1)).all()


def test_distinct_scores_lexical_diversity_by_hand():
    texts = ["a b c d e f g h i j", "good time good time good time good time", "yes", "A b A b"]
    scores = make_scorer("distinct").score(["q"] * 4, texts)
    # 9 distinct of 9 bigrams; 2 distinct of 7 (floor 8); none; {(a,b), (b,a)} of 3 (floor 8), case-folded
    np.testing.assert_allclose(scores, [9 / 9, 2 / 8, 0.0, 2 / 8])


def test_scorers_check_their_inputs_and_accept_empty_batches():
    scorer = make_scorer("vader")
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ScorerError, match="2 prompts and 1 responses"):
        scorer.score(["a", "b"], ["x"])


def test_compact_specs_parse_into_configs():
    assert parse_scorer_spec("vader") == ScorerConfig(kind="vader")
    assert parse_scorer_spec(" profanity , role=cost, multiplier=-1 ") == ScorerConfig(kind="profanity", role="cost", multiplier=-1.0)
    config = parse_scorer_spec("hf-classifier:/models/rm,label=POSITIVE,output=prob,batch_size=4,max_length=512,dtype=bfloat16")
    options = config.options
    assert (config.kind, config.path, options.label, options.output) == ("hf-classifier", "/models/rm", "POSITIVE", "prob")
    assert (options.batch_size, options.max_length, options.dtype, options.device) == (4, 512, "bfloat16", "auto")
    # YAML's flat form and the spec string are one config
    assert ScorerConfig.from_mapping({"kind": "hf-classifier", "path": "/models/rm", "label": "POSITIVE", "output": "prob",
                                      "batch_size": 4, "max_length": 512, "dtype": "bfloat16"}) == config
    assert parse_scorer_spec("python:pkg.mod:fn,name=mine").path == "pkg.mod:fn"
    assert parse_scorer_spec("safe-rlhf-score:/m/beaver-7b-v1.0-cost,role=cost").role == "cost"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sentiment", "unknown scorer kind 'sentiment' (reward.scorers[].kind); known scorer kinds: distinct, "
                      "head, hf-classifier, profanity, python, safe-rlhf-score, vader"),
        ("hf-classifier", "needs a path"),
        ("safe-rlhf-score", "needs a path"),
        ("python", "needs a path"),
        ("vader,role=penalty", "role 'penalty'"),
        ("vader,weight=2", "scorer kind 'vader' has no option 'weight'; its options: none"),
        ("vader:/models/x", "scorer kind 'vader' takes no path"),
        ("hf-classifier:/m,batch_size=big", "scorer kind 'hf-classifier': batch_size must be int, got 'big'"),
        ("vader,multiplier=two", "scorer kind 'vader': multiplier must be float, got 'two'"),
        ("vader,label=1", "scorer kind 'vader' has no option 'label'"),
        ("hf-classifier:/m,output=probability", "output is 'probability'; choose one of 'logit', 'prob'"),
        ("profanity,template={response}", "scorer kind 'profanity' has no option 'template'"),
        ("distinct,min_bigrams=4,label=1", "its options: min_bigrams"),
    ],
)
def test_bad_specs_raise_one_clear_error(spec, message):
    with pytest.raises(ScorerError, match=re.escape(message)):
        make_scorer(spec)


def test_python_scorer_calls_the_users_function(user_module):
    scorer = make_scorer(f"python:{user_module}:length")
    assert scorer.name == "python:my_rewards:length"
    np.testing.assert_array_equal(scorer.score(["a", "b"], ["xyz", ""]), np.array([3.0, 0.0], np.float32))
    nested = make_scorer(ScorerConfig(kind="python", path=f"{user_module}:Scores.prompt_length", name="plen"))
    assert nested.name == "plen"
    np.testing.assert_array_equal(nested.score(["ab", "abcd"], ["x", "y"]), [2.0, 4.0])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("too_few", r"returned shape \(1,\) for 2 responses"),
        ("not_numbers", "not a sequence of floats"),
        ("nan", "non-finite scores at positions \\[0, 1\\]"),
        ("numeric_strings", "not a sequence of floats .*e.g. '1.5'"),
        ("raises", "scorer 'python:my_rewards:raises' raised KeyError: 'label'"),
    ],
)
def test_python_scorer_outputs_are_validated(user_module, target, message):
    with pytest.raises(ScorerError, match=message):
        make_scorer(f"python:{user_module}:{target}").score(["a", "b"], ["x", "y"])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'.*PYTHONPATH"),
        ("my_rewards:missing", "has no attribute 'missing'"),
        ("my_rewards:NOT_CALLABLE", "is a int, not a callable"),
        ("my_rewards", "must look like 'module.sub:function'"),
    ],
)
def test_python_scorer_import_errors_name_the_fix(user_module, target, message):
    with pytest.raises(ScorerError, match=message):
        make_scorer(f"python:{target}")
