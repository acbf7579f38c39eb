"""`tokenalign fit-scorer`: fit a reward, cost or token head over a frozen LM's states from preference data.

The LM runs once over every response (batched, no gradients) and its states are kept; only the head
trains, for a few epochs over those features, so fitting on a CPU takes seconds to minutes. A held-out
share of the pairs measures it:

    reward  pair accuracy: r(chosen) > r(rejected)
    cost    pair accuracy: c(unsafer) > c(safer); sign accuracy: (c > 0) == unsafe
    token   token accuracy on the tokens the revision changed (p_pos > ½ on added, < ½ on removed ones);
            pair accuracy: Σ_t r_t(revised) > Σ_t r_t(answer) where the revision changed anything

The head (head.safetensors, head.json) and fit_report.json (config, data sizes, metrics) go to `out`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tokenalign.core.parsing import apply_override, from_dict
from tokenalign.data.pairs import PreferencePair, load_pairs
from tokenalign.data.token_labels import revision_labels
from tokenalign.heads.losses import bradley_terry_loss, cost_model_loss, soft_token_loss
from tokenalign.heads.model import CONFIG_FILE, HeadConfig, HeadKind, ScoreHead, lm_fingerprint, save_head
from tokenalign.heads.states import Pooling, ResponseStates, StateReader, pooled
from tokenalign.lm.loader import LMDtype
from tokenalign.workflows.demo_preferences import PAIR_SOURCES

REQUIRED_LABELS: dict[str, tuple[str, ...]] = {
    "reward": ("other_answer", "better"),
    "cost": ("other_answer", "safer", "is_safe", "is_other_safe"),
    "token": ("revised",),
}


@dataclass(frozen=True)
class FitConfig:
    """What `tokenalign fit-scorer` fits, on which data and LM, and how."""

    kind: HeadKind = "reward"
    """reward (Bradley–Terry), cost (safe-rlhf's cost model) or token (TLCR's discriminator)."""
    data: list[str] = field(default_factory=lambda: ["builtin:demo-prefs"])
    """Preference data specs (file, name:proportion:path, builtin:demo-prefs), as tokenalign/data/pairs.py reads."""
    out: str = ""
    """Directory the head is saved to (must not hold a head already)."""
    lm: str = "builtin:tiny"
    """The frozen LM whose states the head reads: the policy LM (so actors score for free) or any local HF model."""
    dtype: LMDtype = "auto"
    """dtype of the LM's forwards (auto = bf16 on a GPU that supports it, fp32 on a CPU)."""
    device: str = "auto"
    """Where the LM and head run; auto = CUDA when present, else CPU."""
    eval_fraction: float = 0.1
    """Share of the pairs held out to measure the head."""
    epochs: int = 10
    """Passes over the training features. A frozen-feature head needs more than the 1–2 epochs safe-rlhf and TLCR
    fine-tune a whole LM for; ours are cheap (no LM forward per epoch)."""
    batch_size: int = 64
    """Pairs (reward, cost) or tokens ÷ 16 (token) per gradient step."""
    lr: float = 1e-3
    """Adam learning rate of the head (a small MLP, not the 2e-5 / 1e-5 of safe-rlhf's / TLCR's full fine-tuning)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    widths: list[int] = field(default_factory=lambda: [256])
    """Hidden widths of the head's MLP."""
    pooling: Pooling = "last"
    """Reward and cost heads: the state after the response's last token (safe-rlhf's end score) or the mean of its
    tokens' states (steadier on a small LM, whose last state forgets earlier words)."""
    lm_batch_size: int = 32
    """Responses per LM forward while reading states."""
    seed: int = 42
    """Seed of the data subsampling, the held-out split and the head's initialisation."""
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode; offline keeps the run under `out`/wandb."""

    def __post_init__(self) -> None:
        if self.kind not in REQUIRED_LABELS:
            raise ValueError(f"kind is {self.kind!r}; choose one of {', '.join(REQUIRED_LABELS)}")
        if not self.out:
            raise ValueError(f"out: give the directory to save the head in, e.g. out=runs/heads/{self.kind}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for key in ("epochs", "batch_size", "lm_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be ≥ 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def load_fit_config(overrides: list[str] | tuple[str, ...]) -> FitConfig:
    """FitConfig from `key=value` overrides (a ConfigError names a bad key); one data spec needs no brackets."""
    data: dict = {}
    for override in overrides:
        apply_override(data, override)
    if isinstance(data.get("data"), str):
        data["data"] = [data["data"]]
    return from_dict(FitConfig, data)


@dataclass
class FitResult:
    """What fitting produced: where the head is and how it did on held-out pairs."""

    out: Path
    """The head's directory."""
    train_pairs: int
    """Pairs fitted on."""
    eval_pairs: int
    """Pairs held out."""
    metrics: dict[str, float]
    """Held-out accuracies and the last training loss."""
    seconds: float
    """Wall-clock time of the whole fit."""


def fit_head(config: FitConfig) -> FitResult:
    """Read the LM's states of every response, fit the head, measure it on held-out pairs, save it."""
    import wandb
    from tqdm import tqdm

    from tokenalign.lm.loader import load_lm
    from tokenalign.rewards.hf_common import resolve_device

    start = time.perf_counter()
    out = Path(config.out).expanduser()
    if (out / CONFIG_FILE).exists():
        raise FileExistsError(f"{out} already holds a head; choose another out= or delete {out / CONFIG_FILE} first")
    pairs = load_pairs(config.data, seed=config.seed, require=REQUIRED_LABELS[config.kind],
                       builtins=PAIR_SOURCES)
    if len(pairs) < 2:
        raise ValueError(f"data {config.data} holds {len(pairs)} pair(s); fitting and measuring a head needs at least 2")
    order = np.random.default_rng(config.seed).permutation(len(pairs))
    n_eval = max(1, round(len(pairs) * config.eval_fraction))
    train, held_out = [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]

    device = resolve_device(config.device)
    model, tokenizer = load_lm(config.lm, device=device, dtype=config.dtype)
    reader = StateReader(model=model, tokenizer=tokenizer, batch_size=config.lm_batch_size)
    torch.manual_seed(config.seed)
    head = ScoreHead(HeadConfig(kind=config.kind, lm=config.lm, lm_fingerprint=lm_fingerprint(model),
                                hidden_size=reader.hidden_size, widths=tuple(config.widths),
                                pooling=config.pooling)).to(device)
    features = _FEATURES[config.kind]
    bar = tqdm(total=len(pairs), desc="reading LM states", unit="pair", disable=None)
    train_data = features(reader, train, bar, config.pooling)
    eval_data = features(reader, held_out, bar, config.pooling)
    bar.close()

    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project="tokenalign", job_type="fit-scorer", dir=str(out), mode=config.wandb_mode,
                     config=asdict(config))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n_train = len(next(iter(train_data.values())))
    batch = config.batch_size * (16 if config.kind == "token" else 1)
    steps = config.epochs * -(-n_train // batch)
    loss = torch.tensor(float("nan"))
    with tqdm(total=steps, desc=f"fitting {config.kind} head", unit="step", disable=None) as bar:
        for epoch in range(config.epochs):
            head.train()
            for index in torch.randperm(n_train, generator=generator).split(batch):
                loss = _LOSSES[config.kind](head, {k: v[index].to(device) for k, v in train_data.items()})
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
            metrics = {"epoch": epoch + 1, "train_loss": loss.item(), **_evaluate(config.kind, head, eval_data, device)}
            run.log(metrics)
    head.eval()
    save_head(head.cpu(), out)
    result = FitResult(out=out, train_pairs=len(train), eval_pairs=len(held_out), metrics=metrics,
                       seconds=time.perf_counter() - start)
    report = {"config": asdict(config), "train_pairs": result.train_pairs, "eval_pairs": result.eval_pairs,
              "metrics": metrics, "seconds": round(result.seconds, 1)}
    (out / "fit_report.json").write_text(json.dumps(report, indent=2) + "\n")
    run.summary.update(metrics)
    run.finish()
    return result


# --------------------------------------------------------------------------------------------- features
def _pooled_states(reader: StateReader, prompts: list[str], responses: list[str], pooling: Pooling) -> torch.Tensor:
    """(n, H) what the head reads of each response."""
    states = reader.states(reader.encode(prompts, responses))
    return pooled([ResponseStates(states=s, length=s.shape[0] - 1) for s in states], pooling)


def _reward_features(reader: StateReader, pairs: list[PreferencePair], bar, pooling: Pooling) -> dict[str, torch.Tensor]:
    prompts = [p.prompt for p in pairs]
    out = {"chosen": _pooled_states(reader, prompts, [p.chosen for p in pairs], pooling),
           "rejected": _pooled_states(reader, prompts, [p.rejected for p in pairs], pooling)}
    bar.update(len(pairs))
    return out


def _cost_features(reader: StateReader, pairs: list[PreferencePair], bar, pooling: Pooling) -> dict[str, torch.Tensor]:
    prompts = [p.prompt for p in pairs]
    safer_is_safe = [p.is_safe if p.safer else p.is_other_safe for p in pairs]
    unsafer_is_safe = [p.is_other_safe if p.safer else p.is_safe for p in pairs]
    out = {"safer": _pooled_states(reader, prompts, [p.safer_answer for p in pairs], pooling),
           "unsafer": _pooled_states(reader, prompts, [p.unsafer_answer for p in pairs], pooling),
           "safer_is_safe": torch.tensor(safer_is_safe, dtype=torch.bool),
           "unsafer_is_safe": torch.tensor(unsafer_is_safe, dtype=torch.bool)}
    bar.update(len(pairs))
    return out


def _token_features(reader: StateReader, pairs: list[PreferencePair], bar, pooling: Pooling) -> dict[str, torch.Tensor]:
    """Every token of each answer and its revision with TLCR's soft label; `pair` and `revised` say whose it is."""
    answers = reader.encode([p.prompt for p in pairs], [p.answer for p in pairs])
    revisions = reader.encode([p.prompt for p in pairs], [p.revised for p in pairs])
    answer_states, revised_states = reader.states(answers), reader.states(revisions)
    states, labels, owner, is_revised = [], [], [], []
    for i, ((_, a), (_, r)) in enumerate(zip(answers, revisions)):
        a_labels, r_labels = revision_labels(a, r)
        for tokens, token_labels, revised in ((answer_states[i][1:], a_labels, False), (revised_states[i][1:], r_labels, True)):
            states.append(tokens)
            labels.append(torch.from_numpy(token_labels))
            owner.append(torch.full((len(token_labels),), i))
            is_revised.append(torch.full((len(token_labels),), revised))
    bar.update(len(pairs))
    hidden = reader.hidden_size
    return {"state": torch.cat(states) if states else torch.zeros(0, hidden),
            "p_pos": torch.cat(labels).float(), "pair": torch.cat(owner).long(), "revised": torch.cat(is_revised).bool()}


_FEATURES = {"reward": _reward_features, "cost": _cost_features, "token": _token_features}


# ---------------------------------------------------------------------------------------- losses, metrics
_LOSSES = {
    "reward": lambda head, b: bradley_terry_loss(head(b["chosen"]), head(b["rejected"])),
    "cost": lambda head, b: cost_model_loss(head(b["safer"]), head(b["unsafer"]), safer_is_safe=b["safer_is_safe"],
                                            unsafer_is_safe=b["unsafer_is_safe"]),
    "token": lambda head, b: soft_token_loss(head(b["state"]), b["p_pos"]),
}


@torch.no_grad()
def _evaluate(kind: str, head: ScoreHead, data: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    head.eval()
    data = {k: v.to(device) for k, v in data.items()}
    if kind == "reward":
        return {"eval_pair_accuracy": (head(data["chosen"]) > head(data["rejected"])).float().mean().item()}
    if kind == "cost":
        safer, unsafer = head(data["safer"]), head(data["unsafer"])
        signs = torch.cat([(safer > 0) != data["safer_is_safe"], (unsafer > 0) != data["unsafer_is_safe"]])
        return {"eval_pair_accuracy": (unsafer > safer).float().mean().item(),
                "eval_sign_accuracy": signs.float().mean().item()}
    reward = head.token_reward(data["state"])
    p_pos = torch.softmax(head(data["state"]), dim=-1)[:, 1]
    edited = data["p_pos"] != 0.5
    metrics = {"eval_token_accuracy": ((p_pos > 0.5) == (data["p_pos"] > 0.5))[edited].float().mean().item()
               if bool(edited.any()) else float("nan")}
    n_pairs = int(data["pair"].max()) + 1 if data["pair"].numel() else 0
    sums = torch.zeros(n_pairs, 2, device=device).index_put_(
        (data["pair"], data["revised"].long()), reward, accumulate=True)
    changed = torch.zeros(n_pairs, dtype=torch.bool, device=device).index_put_((data["pair"][edited],), torch.tensor(True, device=device))
    metrics["eval_pair_accuracy"] = ((sums[:, 1] > sums[:, 0])[changed].float().mean().item()
                                     if bool(changed.any()) else float("nan"))
    return metrics
