"""A trained agent inside `model.generate`: the logits processor samples the engine's emission distribution, an
untrained agent leaves generate's sampling as it was, lookahead agents and a second warping are refused, and the
README's example runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import scipy.stats
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tokenalign.agents.chain import emission_log_probs
from tokenalign.agents.policy import AcceptRejectPolicy
from tokenalign.config import load_config, save_config
from tokenalign.envs.candidates import SamplingConfig
from tokenalign.envs.engine import DecodingEngine, EngineConfig
from tokenalign.hf import AgentLogitsProcessor
from tokenalign.run.checkpoints import write_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPT = "The secret of life is"
SAMPLING = SamplingConfig(top_k=12, top_p=0.95, temperature=0.8)


def agent_for(model, *, moved: bool) -> AcceptRejectPolicy:
    """A context-mode agent for `model`: untrained (π_ref), or with a residual far from zero."""
    torch.manual_seed(0)
    agent = AcceptRejectPolicy(state_size=2 * model.config.hidden_size + 2, widths=(16,))
    if moved:
        torch.nn.init.normal_(agent.body[-1].weight, std=1.0)
    return agent.eval()


class FirstScores:
    """A processor that keeps the raw scores of generate's first step (placed before the agent's)."""

    def __init__(self) -> None:
        self.raw: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.raw is None:
            self.raw = scores.clone()
        return scores


def first_step(model, tokenizer, processor: AgentLogitsProcessor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw logits, the distribution generate samples from) of the first generated token of each prompt."""
    spy = FirstScores()
    kwargs = processor.generate_kwargs()
    kwargs["logits_processor"] = LogitsProcessorList([spy, *kwargs["logits_processor"]])
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=1, pad_token_id=tokenizer.pad_token_id, output_scores=True,
                         return_dict_in_generate=True, **kwargs)
    return spy.raw, torch.log_softmax(out.scores[0].double(), dim=-1)


def test_an_untrained_agent_leaves_generates_sampling_unchanged(tiny_lm):
    """Exactly the distribution generate's own temperature / top-k / top-p warpers give, and samples χ²-fit it."""
    model, tokenizer = tiny_lm
    processor = AgentLogitsProcessor(model=model, policy=agent_for(model, moved=False), sampling=SAMPLING)
    try:
        raw, ours = first_step(model, tokenizer, processor, [PROMPT, "A man", "Love is"])
        warped = raw
        for warper in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(12), TopPLogitsWarper(0.95)):
            warped = warper(None, warped)
        reference = torch.log_softmax(warped.double(), dim=-1)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(reference))
        finite = torch.isfinite(reference)
        torch.testing.assert_close(ours[finite], reference[finite], atol=1e-5, rtol=1e-5)
        # Sampled: 3000 first tokens of one prompt through the processor against generate's own warping.
        rows = 3000
        enc = tokenizer([PROMPT] * rows, return_tensors="pt")
        torch.manual_seed(1)
        drawn = model.generate(**enc, max_new_tokens=1, pad_token_id=tokenizer.pad_token_id,
                               **processor.generate_kwargs())[:, -1]
        support = finite[0].nonzero().flatten()
        observed = torch.stack([(drawn == t).sum() for t in support]).double()
        assert int(observed.sum()) == rows
        expected = reference[0, support].exp() * rows
        assert scipy.stats.chisquare(observed.numpy(), (expected / expected.sum() * rows).numpy()).pvalue > 1e-3
    finally:
        processor.remove()


def test_the_processor_samples_the_engines_emission_distribution(tiny_lm):
    """For an agent far from π_ref: generate's step distribution is the engine's π(i) = p_i·∏_{j<i}(1 − p_j) over
    the same candidates, exactly, and 3000 draws χ²-fit it."""
    model, tokenizer = tiny_lm
    agent = agent_for(model, moved=True)
    engine = DecodingEngine(model=model, tokenizer=tokenizer,
                            config=EngineConfig(max_new_tokens=1, sampling=SAMPLING, candidate_state="context"))
    batch = engine.start([PROMPT])
    count = int(batch.cand.count[0])
    ranks = torch.arange(engine.k)
    with torch.no_grad():
        logit = agent.accept_logit(engine.observation(batch, torch.zeros_like(ranks), ranks)).unsqueeze(0)
    pi = emission_log_probs(logit.double(), batch.cand.count)[0, :count].exp()
    tokens = batch.cand.token_ids[0, :count]
    assert float((pi - batch.cand.logp[0, :count].double().exp()).abs().max()) > 0.05  # the agent moved the text

    processor = AgentLogitsProcessor(model=model, policy=agent, sampling=SAMPLING)
    try:
        _, ours = first_step(model, tokenizer, processor, [PROMPT])
        torch.testing.assert_close(ours[0, tokens].exp(), pi, atol=1e-5, rtol=1e-4)
        rows = 3000
        enc = tokenizer([PROMPT] * rows, return_tensors="pt")
        torch.manual_seed(2)
        drawn = model.generate(**enc, max_new_tokens=1, pad_token_id=tokenizer.pad_token_id,
                               **processor.generate_kwargs())[:, -1]
        observed = torch.stack([(drawn == t).sum() for t in tokens]).double()
        assert int(observed.sum()) == rows
        assert scipy.stats.chisquare(observed.numpy(), (pi / pi.sum() * rows).numpy()).pvalue > 1e-3
    finally:
        processor.remove()


def test_a_second_warping_by_generate_is_refused(tiny_lm):
    model, tokenizer = tiny_lm
    processor = AgentLogitsProcessor(model=model, policy=agent_for(model, moved=False), sampling=SAMPLING)
    enc = tokenizer([PROMPT], return_tensors="pt")
    try:
        with pytest.raises(ValueError, match=r"generate would apply TopPLogitsWarper .* \*\*processor.generate_kwargs"):
            model.generate(**enc, max_new_tokens=2, do_sample=True, top_p=0.9, pad_token_id=tokenizer.pad_token_id,
                           logits_processor=LogitsProcessorList([processor]))
        # generate's default top-k (50) keeps every candidate of the run's top-k 12: no second warp, allowed
        out = model.generate(**enc, max_new_tokens=2, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                             logits_processor=LogitsProcessorList([processor]))
        assert out.shape[1] == enc.input_ids.shape[1] + 2
    finally:
        processor.remove()


def make_run(tmp_path: Path, model, *, candidate_state: str) -> Path:
    """A run directory as `tokenalign train` leaves it: config.yaml and a checkpoint holding the agent."""
    run_dir = tmp_path / f"demo-{candidate_state}"
    run_dir.mkdir()
    learner = "value_guided" if candidate_state == "context" else "ppo"  # value_guided reads context states only
    config = load_config(None, [f"engine.candidate_state={candidate_state}", "engine.sampling.top_k=12",
                                f"learner.name={learner}"])
    save_config(run_dir / "config.yaml", config)
    hidden = model.config.hidden_size
    state_size = 2 * hidden + 2 if candidate_state == "context" else hidden
    policy = AcceptRejectPolicy(state_size=state_size, widths=(16,)).policy_state()
    write_checkpoint(run_dir / "checkpoints", step=1, learner={}, policy=policy, progress={"episodes": 1})
    return run_dir


def test_from_run_loads_a_context_agent_and_refuses_a_lookahead_one(tmp_path, tiny_lm):
    model, _ = tiny_lm
    processor = AgentLogitsProcessor.from_run(make_run(tmp_path, model, candidate_state="context"), model)
    try:
        assert processor.sampling.top_k == 12
    finally:
        processor.remove()
    with pytest.raises(ValueError, match="trained with engine.candidate_state=lookahead: .* train it with "
                                         "engine.candidate_state=context"):
        AgentLogitsProcessor.from_run(make_run(tmp_path, model, candidate_state="lookahead"), model)
    with pytest.raises(FileNotFoundError, match="is not a tokenalign run directory"):
        AgentLogitsProcessor.from_run(tmp_path / "nowhere", model)


def test_the_readme_example_runs(tmp_path, tiny_lm, capsys):
    model, _ = tiny_lm
    run_dir = make_run(tmp_path, model, candidate_state="context")
    block = re.search(r"```python\n(from tokenalign.hf import AgentLogitsProcessor\n.*?)```", README.read_text(), re.S)
    assert block, "README: the generate example is missing"
    code = block.group(1).replace("runs/demo-context", str(run_dir))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[") and printed.count("'") >= 4  # two decoded continuations
