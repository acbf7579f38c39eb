"""Evaluation: decode held-out prompts in baseline and agent modes, score, compare, and report.

    evaluate.py        evaluate(task, mode, prompts, ...) → EvalResult(label, records, summary)
    sampler.py         the LLM alone: base sampling, greedy (best-of-N samples through it)
    proxy.py           MARA's all-candidate proxy strategies for a greedy agent: top1, random, max_prob
    metrics.py         summary statistics (mean ± SE, cost success, distinct-n, compute) and summary.json
    perplexity.py      the base LM's perplexity of a response given its prompt
    forward_tokens.py  compute cost as LM forward tokens
    records.py         Generation records and their JSONL files
    agent_source.py    load a trained agent from a run directory or checkpoint
    arena.py           two generations files head to head (safe-rlhf's arena, MARA's preference rate)
    report.py          end-of-run report of a training run (report.md, reward.png, cost.png)
    summary.py         the trainer's end-of-run evaluation (evaluate_run → summary.json)
    commands.py        `tokenalign eval` and `tokenalign arena`
"""
