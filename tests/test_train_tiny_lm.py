"""scripts/train_tiny_lm.py end to end on a small synthetic fortune file: `--measure` re-measures the saved
model exactly as the model card reports it, and writes nothing."""
from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_lm.py"
WORDS = "the a cat dog runs sleeps under over moon sun quietly loudly never always my your old new".split()
SMALL = ["--vocab-size", "300", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-positions", "64",
         "--block-size", "16", "--batch-size", "4", "--warmup-steps", "2", "--eval-every", "5",
         "--n-train-prompts", "10", "--n-test-prompts", "3", "--val-frac", "0.1"]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_measure_reproduces_the_model_cards_perplexity(tmp_path: Path) -> None:
    rng = random.Random(0)
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "sayings").write_text(
        "\n%\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 20))) for _ in range(120)) + "\n%\n")
    out, prompts = tmp_path / "lm", tmp_path / "prompts"
    paths = ["--fortune-dir", str(fortunes), "--out-dir", str(out), "--prompts-dir", str(prompts)]
    run(*paths, *SMALL, "--budget-min", "0.05")
    card = (out / "README.md").read_text()
    reported = float(re.search(r"\| val perplexity \(fp16 weights reloaded\) \| ([0-9.]+) \|", card).group(1))
    assert f"--out-dir {out}" in card  # the card names the command that made it
    written = {p: p.stat().st_mtime_ns for p in [*out.iterdir(), *prompts.iterdir()]}

    printed = run(*paths, *SMALL, "--measure")
    measured = float(re.search(r"val perplexity ([0-9.]+) over", printed).group(1))
    assert measured == reported
    assert 1.0 < measured < 300.0  # a real next-token perplexity over this vocabulary
    assert {p: p.stat().st_mtime_ns for p in [*out.iterdir(), *prompts.iterdir()]} == written
