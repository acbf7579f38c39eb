"""The demo preference set: gold labels that recompute, strict preferences, real revisions, determinism, cache, CLI."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenalign import cli
from tokenalign.data.prompts import load_prompts
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.eval.sampler import sample_copies
from tokenalign.rewards.factory import make_scorer
from tokenalign.workflows.demo_preferences import (
    CACHE_VERSION,
    SAFE_THRESHOLD,
    ensure_demo_preferences,
    make_demo_preferences,
)

PAIRS, MAX_NEW = 24, 12
FIELDS = {"input": str, "answer": str, "other_answer": str, "better": bool, "safer": bool, "is_safe": bool,
          "is_other_safe": bool, "revised": str, "answer_reward": float, "other_answer_reward": float,
          "revised_reward": float, "answer_cost": float, "other_answer_cost": float}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    report = make_demo_preferences(pairs=PAIRS, out=out, seed=3, max_new_tokens=MAX_NEW)
    return out, report, read(out)


@pytest.fixture(scope="module")
def vader():
    return make_scorer("vader")


def test_records_have_the_raw_sample_fields_and_types(made):
    _, report, rows = made
    assert len(rows) == report.pairs == PAIRS
    train = {p.text for p in load_prompts("builtin:demo-train")}
    for row in rows:
        assert set(row) == set(FIELDS)
        for key, kind in FIELDS.items():
            assert type(row[key]) is kind, (key, row[key])
        assert row["input"] in train


def test_better_is_the_recomputed_gold_reward_and_ties_are_dropped(made, vader):
    _, report, rows = made
    answer = vader.score([r["input"] for r in rows], [r["answer"] for r in rows])
    other = vader.score([r["input"] for r in rows], [r["other_answer"] for r in rows])
    np.testing.assert_array_equal(answer, np.float32([r["answer_reward"] for r in rows]))
    np.testing.assert_array_equal(other, np.float32([r["other_answer_reward"] for r in rows]))
    assert not (answer == other).any()
    assert [r["better"] for r in rows] == (answer > other).tolist()
    assert 0 < sum(r["better"] for r in rows) < PAIRS  # the answer is not always the better one
    assert report.ties > 0 and report.sampled_pairs >= PAIRS + report.ties
    assert report.tie_rate == report.ties / report.sampled_pairs


def test_revisions_raise_the_recomputed_gold_reward(made, vader):
    _, report, rows = made
    revised = vader.score([r["input"] for r in rows], [r["revised"] for r in rows])
    np.testing.assert_array_equal(revised, np.float32([r["revised_reward"] for r in rows]))
    changed = [r["revised"] != r["answer"] for r in rows]
    assert any(changed) and not all(changed)
    for row, edit in zip(rows, changed):
        # An edit is kept only when it beats the answer; otherwise `revised` is the answer itself.
        assert (row["revised_reward"] > row["answer_reward"]) == edit
        assert row["revised_reward"] >= row["answer_reward"]
    assert report.revised == sum(changed)
    gain = np.mean([r["revised_reward"] - r["answer_reward"] for r, c in zip(rows, changed) if c])
    assert report.revision_gain == pytest.approx(gain, rel=1e-5)


def test_safety_labels_follow_the_recomputed_cost(made):
    _, _, rows = made
    cost = make_scorer("profanity").score([r["input"] for r in rows] * 2,
                                          [r["answer"] for r in rows] + [r["other_answer"] for r in rows])
    np.testing.assert_array_equal(cost, np.float32([r["answer_cost"] for r in rows] +
                                                   [r["other_answer_cost"] for r in rows]))
    for row in rows:
        assert row["is_safe"] == (row["answer_cost"] < SAFE_THRESHOLD)
        assert row["is_other_safe"] == (row["other_answer_cost"] < SAFE_THRESHOLD)
        assert row["safer"] == (row["answer_cost"] <= row["other_answer_cost"])


def test_same_seed_same_file_other_seed_other_file(made, tmp_path):
    out, _, _ = made
    again = make_demo_preferences(pairs=PAIRS, out=tmp_path / "again.jsonl", seed=3, max_new_tokens=MAX_NEW)
    assert Path(again.out).read_bytes() == out.read_bytes()
    other = make_demo_preferences(pairs=PAIRS, out=tmp_path / "other.jsonl", seed=4, max_new_tokens=MAX_NEW)
    assert Path(other.out).read_bytes() != out.read_bytes()


def test_meta_sidecar_is_the_report(made):
    out, report, _ = made
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text(encoding="utf-8"))
    assert meta == json.loads(json.dumps(dataclasses.asdict(report)))
    assert meta["gold_reward"] == "vader" and meta["gold_cost"] == "profanity" and meta["seed"] == 3
    assert meta["command"].startswith(f"tokenalign make-preferences --pairs {PAIRS} --out {out} --seed 3 ")
    assert not list(out.parent.glob("*.tmp"))


def test_sampler_restores_order_and_shares_prefill_exactly(tiny_lm):
    """With top_k=1 every copy is the greedy continuation, which HF's generate computes unpadded, one by one."""
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=10))
    contexts = engine.encode(["While you recently", "", "Be prepared to accept sacrifices. Vestal", "A rope"])
    got = sample_copies(engine, contexts, copies=2, max_new_tokens=10, sampling=SamplingConfig(top_k=1), batch_size=4,
                  generator=torch.Generator().manual_seed(0))
    for i, context in enumerate(contexts):
        ids = torch.tensor([context])
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=10)[0, len(context) :].tolist()
        ref = ref[: ref.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ref else ref
        assert got[2 * i] == got[2 * i + 1] == ref


def test_ensure_generates_once_into_the_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TOKENALIGN_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="tokenalign.workflows.demo_preferences"):
        path = ensure_demo_preferences(pairs=4, seed=1)
    assert path == tmp_path / "cache" / f"demo-preferences-{CACHE_VERSION}-4-seed1.jsonl"
    assert len(read(path)) == 4 and str(path) in caplog.text and "delete" in caplog.text
    before = path.stat().st_mtime_ns

    def fail(**_):
        raise AssertionError("regenerated a cached set")

    monkeypatch.setattr("tokenalign.workflows.demo_preferences.make_demo_preferences", fail)
    assert ensure_demo_preferences(pairs=4, seed=1) == path and path.stat().st_mtime_ns == before


def test_cli_prints_the_report_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    assert cli.main(["make-preferences", "--pairs", "3", "--out", str(out), "--max-new-tokens", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"] == 3 and len(read(out)) == 3
    assert printed["command"].startswith("tokenalign make-preferences --pairs 3 ")
    assert cli.main(["make-preferences", "--pairs", "0", "--out", str(out)]) == 1
    assert "pairs must be an int >= 1" in capsys.readouterr().err
