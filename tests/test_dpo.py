"""DPO on the accept/reject agent: its losses by hand, planted pairs learned, and a run like any other."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tokenalign.actors.pair_source import PairSource
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.learners import config_class, make_learner
from tokenalign.learners.dpo import adaptive_margin_loss, dpo_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_by_hand():
    h = torch.tensor([2.0, -1.0, 0.0])
    expected = -(log_sigmoid(0.2) + log_sigmoid(-0.1) + log_sigmoid(0.0)) / 3
    assert dpo_loss(h, beta=0.1).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_margin_loss_by_hand():
    """−log σ(β·[h − clamp(h_unpref, 0, 10)]): the margin is clamped below at 0 and above at 10, and carries no gradient."""
    h = torch.tensor([3.0, 3.0, 3.0], requires_grad=True)
    h_unpref = torch.tensor([-4.0, 2.0, 25.0], requires_grad=True)
    loss = adaptive_margin_loss(h, h_unpref, beta=0.5, margin_min=0.0, margin_max=10.0)
    expected = -(log_sigmoid(0.5 * 3.0) + log_sigmoid(0.5 * 1.0) + log_sigmoid(0.5 * -7.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert h_unpref.grad is None and h.grad is not None


def planted_pairs(tiny_lm, engine: DecodingEngine, n: int) -> list[dict]:
    """chosen: the LM's top token at every step; rejected: its second. Both are candidates wherever top-p keeps two."""
    from tokenalign.data.prompts import load_prompts

    model, tokenizer = tiny_lm
    prompts = [p.text for p in load_prompts("builtin:demo-train")[:n]]
    out = []
    with torch.no_grad():
        for prompt in prompts:
            texts = []
            for rank in (0, 1):
                ids = engine.encode([prompt])[0]
                new = []
                for _ in range(8):
                    token = int(torch.topk(model(torch.tensor([ids + new])).logits[0, -1], 2).indices[rank])
                    new.append(token)
                texts.append(tokenizer.decode(new))
            out.append({"prompt": prompt, "chosen": texts[0], "rejected": texts[1]})
    return out


@pytest.fixture(scope="module")
def pairs_file(tiny_lm, tmp_path_factory):
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=8))
    path = tmp_path_factory.mktemp("pairs") / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in planted_pairs(tiny_lm, engine, 200)))
    return path


def test_an_agent_trained_on_planted_pairs_prefers_the_chosen_responses_it_never_saw(tiny_lm, pairs_file, tmp_path):
    model, tokenizer = tiny_lm
    engine = DecodingEngine(model=model, tokenizer=tokenizer, config=EngineConfig(max_new_tokens=8))
    lines = pairs_file.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:160]) + "\n")
    (tmp_path / "held_out.jsonl").write_text("\n".join(lines[160:]) + "\n")
    train = PairSource(engine=engine, specs=[str(tmp_path / "train.jsonl")], seed=0)
    held_out = PairSource(engine=engine, specs=[str(tmp_path / "held_out.jsonl")], seed=0)
    assert train.stats()["pairs"] == 160 and 0 <= train.uncovered_share < 0.5
    for loss in ("dpo", "adaptive_margin"):
        learner = make_learner("dpo", state_size=model.config.hidden_size,
                               config=config_class("dpo")(loss=loss, widths=(64,), lr=3e-3, kl_coef=0.5), seed=1)
        everything = held_out.batch(torch.arange(held_out.size))
        with torch.no_grad():
            assert torch.all(learner.margin(learner.policy, everything) == 0)  # it starts as the base LM: h = 0
        for _ in range(150):
            learner.update(train.batch(torch.randint(train.size, (32,), generator=learner.generator)))
        with torch.no_grad():
            h = learner.margin(learner.policy, everything)
        assert (h > 0).float().mean().item() >= 0.95, loss


def test_a_dpo_run_has_the_run_layout_resumes_and_evaluates_like_rl(ray_cluster, pairs_file, tmp_path):
    from tokenalign.config import load_config
    from tokenalign.eval.agent_source import load_agent
    from tokenalign.run.trainer import Trainer

    overrides = ["learner.name=dpo", f"data.pairs=[{pairs_file}]", "learner.params={batch_size: 16, widths: [64]}",
                 "run.total_episodes=320", "run.checkpoint_every=5", "run.eval_prompts=4", "engine.max_new_tokens=8",
                 f"run.runs_dir={tmp_path}"]
    trainer = Trainer.new_run(load_config(None, overrides))
    summary = trainer.run()
    run_dir = trainer.run_dir
    assert set(summary) == {"agent", "base", "best_of_4"} and summary["agent"]["kl_per_response"]["mean"] >= 0
    training = json.loads((run_dir / "training.json").read_text())
    assert training["episodes"] == 320 and training["updates"] == 20  # 320 pairs seen, 16 per update
    assert training["buffer"]["pairs"] == 200 and "uncovered_token_share" in training["buffer"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("learner/loss" in m and "learner/accuracy" in m for m in metrics)
    for name in ("config.yaml", "summary.json", "report.md", "generations.jsonl"):
        assert (run_dir / name).is_file(), name
    policy = load_agent(run_dir, state_size=2 * 256 + 2)  # the demo's context states of the 256-wide LM
    assert any(p.abs().sum() > 0 for p in policy.body[-1].parameters())  # the residual moved from zero
    resumed = Trainer.from_run_dir(run_dir, ["run.total_episodes=480"])
    resumed.run()
    again = json.loads((run_dir / "training.json").read_text())
    assert again["episodes"] == 480 and again["updates"] == 30


def test_dpo_without_pairs_is_one_clear_error_before_any_run_directory(tmp_path):
    from tokenalign.config import load_config
    from tokenalign.core.parsing import ConfigError

    with pytest.raises(ConfigError, match=r"data\.pairs is empty: learner\.name=dpo .*data\.pairs=\[builtin:demo-prefs\]"):
        load_config(None, ["learner.name=dpo", f"run.runs_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())
