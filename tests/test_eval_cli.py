"""`tokenalign eval` / `tokenalign arena` end to end on the bundled model, agent loading, and bad input."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.config import load_config, save_config
from tokenalign.eval.agent_source import find_checkpoint, load_agent
from tokenalign.eval.commands import add_arena_arguments, add_eval_arguments, run_arena_command, run_eval_command
from tokenalign.eval.errors import EvalError
from tokenalign.eval.records import read_generations

HIDDEN = 256  # the bundled tiny LM's hidden size
LOOKAHEAD_SAC = ["learner.name=sac", "engine.candidate_state=lookahead"]  # the agents here read lookahead states
FAST = ["engine.max_new_tokens=6", *LOOKAHEAD_SAC]  # `run` below takes the config as given, not the run's


def parser() -> argparse.ArgumentParser:
    """The subcommands as tokenalign/cli.py wires them."""
    root = argparse.ArgumentParser(prog="tokenalign")
    sub = root.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval")
    ev.add_argument("--config", default=None)
    ev.add_argument("overrides", nargs="*")
    add_eval_arguments(ev)
    add_arena_arguments(sub.add_parser("arena"))
    return root


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "arena":
        return run_arena_command(args)
    return run_eval_command(args, load_config(args.config, args.overrides))


def policy_state(state_size: int = HIDDEN, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return AcceptRejectPolicy(state_size=state_size, widths=(16,)).policy_state()


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run directory as the trainer lays it out; `latest` points at a step holding only learner.pt."""
    checkpoints = tmp_path / "demo-run" / "checkpoints"
    (checkpoints / "step-00000100").mkdir(parents=True)
    torch.save(policy_state(seed=1), checkpoints / "step-00000100" / "policy_state.pt")
    newest = policy_state(seed=2)
    learner_state = {"learner": "sac", "parameterisation": newest["parameterisation"], "state_size": HIDDEN,
                     "config": {"widths": (16,)},
                     "networks": {"policy": newest["state_dict"]}, "optimizers": {}, "extra": {}, "num_updates": 200}
    (checkpoints / "step-00000200").mkdir()
    torch.save({"learner": learner_state, "buffer": {}}, checkpoints / "step-00000200" / "learner.pt")
    (checkpoints / "latest").write_text("step-00000200")
    save_config(tmp_path / "demo-run" / "config.yaml", load_config(None, LOOKAHEAD_SAC))
    return tmp_path / "demo-run"


def test_load_agent_from_run_dir_and_files(run_dir, tmp_path):
    assert find_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000200" / "learner.pt"
    agent = load_agent(run_dir, state_size=HIDDEN)
    expected = policy_state(seed=2)["state_dict"]
    assert all(torch.equal(agent.state_dict()[k], v) for k, v in expected.items()) and not agent.training
    older = run_dir / "checkpoints" / "step-00000100"
    assert find_checkpoint(older) == older / "policy_state.pt"
    assert torch.equal(load_agent(older, state_size=HIDDEN).norm.weight,
                       policy_state(seed=1)["state_dict"]["norm.weight"])


def test_agent_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="agent .*nowhere' does not exist: pass a run directory"):
        load_agent(tmp_path / "nowhere", state_size=HIDDEN)
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(EvalError, match="holds no checkpoint"):
        load_agent(tmp_path / "empty-run", state_size=HIDDEN)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EvalError, match="junk.pt is not a readable torch checkpoint"):
        load_agent(tmp_path / "junk.pt", state_size=HIDDEN)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(EvalError, match=r"holds no agent \(found \['weights'\]\)"):
        load_agent(tmp_path / "other.pt", state_size=HIDDEN)
    torch.save(policy_state(state_size=64), tmp_path / "other-lm.pt")
    with pytest.raises(ValueError, match="agent input size 64 does not match this engine's candidate states of size 256"):
        load_agent(tmp_path / "other-lm.pt", state_size=HIDDEN)


def test_eval_then_arena_end_to_end(run_dir, capsys):
    out = run_dir / "eval"
    assert run(["eval", "--agent", str(run_dir), "--modes", "base,best-of-n,serial,max_prob",
                "--best-of", "2", "--num-prompts", "3", "--batch-size", "4", *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["base", "best-of-2", "agent-serial", "agent-max_prob"]
    assert all(s["n"] == 3 and set(s["reward"]) == {"mean", "se"} for s in summary.values())
    records = read_generations(out / "generations-agent-serial.jsonl")
    assert len(records) == 3 and all(1 <= r.tokens <= 6 for r in records)
    assert "| agent-max_prob (lookahead) | 3 |" in capsys.readouterr().out

    assert run(["arena", str(out / "generations-base.jsonl"), str(out / "generations-agent-serial.jsonl")]) == 0
    arena = out / "arena-agent-serial-vs-base"
    assert {p.name for p in arena.iterdir()} == {"arena.md", "arena.csv", "arena_summary.csv"}
    assert "preference-rate improvement" in capsys.readouterr().out


def test_eval_bad_input_is_one_line_and_status_2(run_dir, tmp_path, capsys):
    def error_of(argv: list[str]) -> str:
        assert run(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tokenalign ")]
        assert len(errors) == 1, errors  # one line, whatever progress bars the LM loader printed besides
        return errors[0]

    assert "does not exist: pass a run directory" in error_of(["eval", "--agent", str(tmp_path / "missing-run")])
    torch.save(policy_state(state_size=64), tmp_path / "other-lm.pt")
    assert "the agent was trained on another LM" in error_of(
        ["eval", "--agent", str(tmp_path / "other-lm.pt"), "--modes", "serial", *FAST])
    (tmp_path / "empty.jsonl").write_text("")
    assert "holds no prompts" in error_of(["eval", "--modes", "base", f"data.test=[{tmp_path / 'empty.jsonl'}]"])
    assert "pass --agent RUN_DIR" in error_of(["eval", "--modes", "base,random"])
    assert "unknown mode(s) ['beam']" in error_of(["eval", "--modes", "beam"])
    assert "--best-of must be >= 1" in error_of(["eval", "--best-of", "0"])
    assert "does not exist; write one with `tokenalign eval`" in error_of(
        ["arena", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])


def test_eval_of_a_run_uses_the_runs_own_config_by_default(run_dir, capsys):
    """A run trained on another reward is scored with that reward, not the demo's (a silently wrong result)."""
    import yaml

    from tokenalign.cli import main
    from tokenalign.core.parsing import to_dict

    config = load_config(None, ["reward.scorers=[distinct]", "engine.max_new_tokens=4", *LOOKAHEAD_SAC])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    assert main(["eval", "--agent", str(run_dir / "checkpoints" / "step-00000200"), "--modes", "base",
                 "--num-prompts", "2", "--out", str(run_dir / "own")]) == 0
    assert f"using the agent's run config {run_dir / 'config.yaml'}" in capsys.readouterr().err
    records = read_generations(run_dir / "own" / "generations-base.jsonl")
    assert all(set(r.scores) == {"distinct"} and len(r.token_ids) <= 4 for r in records)
    assert main(["eval", "--agent", str(run_dir), "--config", "configs/demo.yaml", "--modes", "base",
                 "--num-prompts", "2", "--out", str(run_dir / "demo"), "engine.max_new_tokens=4", *LOOKAHEAD_SAC]) == 0
    assert {frozenset(r.scores) for r in read_generations(run_dir / "demo" / "generations-base.jsonl")} == {
        frozenset({"vader", "profanity"})}
