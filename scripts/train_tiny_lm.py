"""Train the tiny causal LM bundled with tokenalign, plus the demo prompt files.

tokenalign must work without any model hub, so it ships its own small GPT-2
style model. This one-off script makes it reproducible:

1. reads Debian's ``fortunes`` corpus (plain text, entries separated by ``%``),
   drops ASCII art, shuffles with a fixed seed and holds out a validation split;
2. trains a byte-level BPE tokenizer on the training split only;
3. trains a ``GPT2LMHeadModel`` on packed fortunes (each followed by
   ``<|endoftext|>``) with AdamW and a warmup + cosine schedule until a
   wall-clock budget runs out, keeping the checkpoint with the best validation
   perplexity;
4. saves model (fp16 safetensors), tokenizer, generation config and a model
   card in Hugging Face format, then re-measures perplexity from the saved files;
5. writes prompt files: train prompts from training fortunes, test prompts only
   from held-out fortunes.

The defaults are the settings used for the shipped model; see the model card in
``tokenalign/assets/tiny_lm/README.md`` for the resulting numbers. ``--measure``
trains nothing: it rebuilds the same validation split and reports the
perplexity of the model already in ``--out-dir``, so anyone can check the card.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

EOS = "<|endoftext|>"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Pure pictures carry no language signal and would waste model capacity.
SKIPPED_FILES = {"ascii-art"}


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]


def is_ascii_art(text: str) -> bool:
    """Heuristic: pictures are mostly punctuation; prose is mostly letters."""
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return not visible or letters / len(visible) < 0.6


def read_fortunes(fortune_dir: Path) -> list[str]:
    """All fortunes from the top-level text files, in a stable order."""
    fortunes: list[str] = []
    # Only top-level files: the optional ``off/`` subfolder (offensive) is excluded.
    for path in sorted(p for p in fortune_dir.iterdir() if p.is_file()):
        if path.suffix in {".dat", ".u8"} or path.name in SKIPPED_FILES:
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        entry: list[str] = []
        for line in raw.splitlines() + ["%"]:
            if line.strip() == "%":
                text = "\n".join(entry).strip("\n")
                if text.strip() and not is_ascii_art(text):
                    fortunes.append(text)
                entry = []
            else:
                entry.append(line.rstrip())
    return fortunes


def split_fortunes(fortunes: list[str], *, val_frac: float, seed: int) -> Split:
    shuffled = list(fortunes)
    random.Random(seed).shuffle(shuffled)
    n_val = round(len(shuffled) * val_frac)
    return Split(train=shuffled[n_val:], val=shuffled[:n_val])


def train_tokenizer(texts: list[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        # The full byte alphabet guarantees any input string can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def encode_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Concatenate fortunes, each followed by EOS, into one token stream."""
    ids: list[int] = []
    for ids_one in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(ids_one)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def val_blocks(stream: torch.Tensor, block: int) -> torch.Tensor:
    """Non-overlapping (block + 1)-token windows, so inputs and targets share one tensor."""
    n = (len(stream) - 1) // block
    starts = torch.arange(n) * block
    return torch.stack([stream[s : s + block + 1] for s in starts.tolist()])


def next_token_nll(model: GPT2LMHeadModel, chunk: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """NLL of tokens 1..T given their prefixes, for a batch of (T + 1)-token windows."""
    logits = model(input_ids=chunk[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction=reduction
    )


@torch.no_grad()
def perplexity(model: GPT2LMHeadModel, blocks: torch.Tensor, *, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    total_nll = sum(
        next_token_nll(model, blocks[i : i + batch_size], "sum").item() for i in range(0, len(blocks), batch_size)
    )
    model.train(was_training)
    return math.exp(total_nll / blocks[:, 1:].numel())


def uses_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Standard practice: decay matrices only, not biases, LayerNorm gains or embeddings.
    return param.dim() >= 2 and "wte" not in name and "wpe" not in name


def lr_at(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warmup by steps, then cosine decay driven by elapsed wall-clock.

    The run length is a time budget, not a step count, so the cosine follows the
    fraction of the budget used; this still lands at the minimum LR at the end.
    """
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_prompts(texts: list[str], *, limit: int, seed: int) -> list[str]:
    """Openings of 3-8 words of fortunes that are clearly longer than the opening."""
    rng = random.Random(seed)
    prompts: list[str] = []
    seen: set[str] = set()
    for text in texts:
        words = text.split()
        n = rng.randint(3, 8)
        # A prompt must leave something to continue, and be actual words.
        if len(words) < n + 4:
            continue
        prompt = " ".join(words[:n])
        if is_ascii_art(prompt) or prompt in seen:
            continue
        seen.add(prompt)
        prompts.append(prompt)
        if len(prompts) == limit:
            break
    return prompts


def write_jsonl(path: Path, prompts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}, ensure_ascii=False) + "\n")


def save_model(model: GPT2LMHeadModel, state: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Save ``state`` as fp16 safetensors without touching the training model."""
    fp16 = GPT2LMHeadModel(model.config)
    fp16.load_state_dict(state)
    fp16.generation_config = model.generation_config
    fp16.to(torch.float16).save_pretrained(out_dir)


def write_model_card(out_dir: Path, facts: dict[str, object]) -> None:
    lines = [
        "# tokenalign tiny LM",
        "",
        "A small GPT-2 style causal LM bundled with tokenalign so that demos and tests",
        "run fully offline. It is a toy: it writes fortune-cookie-flavoured English,",
        "not reliable text. Trained from scratch by `scripts/train_tiny_lm.py`.",
        "",
        "| item | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += [
        "",
        "Validation perplexity is per BPE token of this tokenizer over the held-out",
        "fortunes packed into blocks (each fortune followed by `<|endoftext|>`), so it",
        "is not comparable with numbers measured under other tokenizers.",
        "",
        "Load it with `tokenalign.lm.loader.load_lm(\"builtin:tiny\")`.",
        "",
        "Re-measure the validation perplexity of the shipped files (needs Debian's",
        "`fortunes` package; nothing is trained or written):",
        "",
        "    python scripts/train_tiny_lm.py --measure",
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")


def saved_perplexity(out_dir: Path, val_texts: list[str], *, block_size: int) -> tuple[float, int]:
    """Validation perplexity (and tokens scored) of the model and tokenizer saved in `out_dir`, loaded exactly
    as users load them, on the blocks training validates on."""
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    val = val_blocks(encode_stream(tokenizer, val_texts), block_size)
    return perplexity(model, val, batch_size=64), val[:, 1:].numel()


def measure(args: argparse.Namespace, split: Split) -> None:
    ppl, n_tokens = saved_perplexity(args.out_dir, split.val, block_size=args.block_size)
    print(f"{args.out_dir}: val perplexity {ppl:.2f} over {n_tokens:,} tokens", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fortune-dir", type=Path, default=Path("/usr/share/games/fortunes"))
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "tokenalign/assets/tiny_lm")
    p.add_argument("--prompts-dir", type=Path, default=REPO_ROOT / "tokenalign/assets/prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--budget-min", type=float, default=70.0, help="wall-clock training budget in minutes")
    p.add_argument("--eval-every", type=int, default=150, help="steps between validations")
    # One thread: the shipped model was trained beside a second configuration, each on one core.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast for training steps (~1.5x faster on AVX512-BF16 CPUs); eval stays fp32",
    )
    p.add_argument(
        "--measure",
        action="store_true",
        help="train nothing: print the validation perplexity of the model in --out-dir and exit",
    )
    p.add_argument("--n-train-prompts", type=int, default=1000)
    p.add_argument("--n-test-prompts", type=int, default=200)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    split = split_fortunes(read_fortunes(args.fortune_dir), val_frac=args.val_frac, seed=args.seed)
    print(f"fortunes: {len(split.train)} train / {len(split.val)} val", flush=True)
    if args.measure:
        measure(args, split)
        return

    args.prompts_dir.mkdir(parents=True, exist_ok=True)
    train_prompts = make_prompts(split.train, limit=args.n_train_prompts, seed=args.seed)
    test_prompts = make_prompts(split.val, limit=args.n_test_prompts, seed=args.seed + 1)
    write_jsonl(args.prompts_dir / "train.jsonl", train_prompts)
    write_jsonl(args.prompts_dir / "test.jsonl", test_prompts)
    print(f"prompts: {len(train_prompts)} train / {len(test_prompts)} test", flush=True)

    tokenizer = train_tokenizer(split.train, vocab_size=args.vocab_size)
    tokenizer.model_max_length = args.n_positions
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out_dir)
    train_ids = encode_stream(tokenizer, split.train)
    val = val_blocks(encode_stream(tokenizer, split.val), args.block_size)
    print(f"tokens: {len(train_ids)} train / {val[:, 1:].numel()} val", flush=True)

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if uses_weight_decay(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not uses_weight_decay(n, p)]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    gen = torch.Generator().manual_seed(args.seed)
    max_start = len(train_ids) - args.block_size - 1
    offsets = torch.arange(args.block_size + 1)
    budget_s = args.budget_min * 60
    t_train = time.time()
    best_ppl, best_step, best_state = float("inf"), 0, None
    step, running, n_running = 0, 0.0, 0
    model.train()
    while True:
        progress = (time.time() - t_train) / budget_s
        done = progress >= 1.0
        if step > 0 and (step % args.eval_every == 0 or done):
            ppl = perplexity(model, val, batch_size=64)
            if ppl < best_ppl:
                best_ppl, best_step = ppl, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                # Saving each improvement means a killed run still leaves a usable model.
                save_model(model, best_state, args.out_dir)
            print(
                f"step {step} | {time.time() - t_train:.0f}s | lr {lr_at(step, progress, args):.2e} "
                f"| train loss {running / max(n_running, 1):.3f} | val ppl {ppl:.2f} (best {best_ppl:.2f})",
                flush=True,
            )
            running, n_running = 0.0, 0
        if done:
            break
        # Random crops of the packed stream give a different block alignment every epoch.
        starts = torch.randint(0, max_start, (args.batch_size,), generator=gen)
        batch = train_ids[starts[:, None] + offsets]
        for group in optim.param_groups:
            group["lr"] = lr_at(step, progress, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = next_token_nll(model, batch)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optim.step()
        running += loss.item()
        n_running += 1
        step += 1
    train_s = time.time() - t_train
    assert best_state is not None, "budget too short for a single evaluation"

    # Re-measure from the saved fp16 files, exactly as users will load them.
    ppl_fp16, _ = saved_perplexity(args.out_dir, split.val, block_size=args.block_size)
    size_mb = sum(f.stat().st_size for f in args.out_dir.iterdir() if f.is_file()) / 2**20
    print(f"best val ppl fp32 {best_ppl:.2f} at step {best_step}; fp16 reloaded {ppl_fp16:.2f}", flush=True)

    write_model_card(
        args.out_dir,
        {
            "corpus": f"Debian `fortunes` ({args.fortune_dir}), all top-level files except "
            f"{', '.join(sorted(SKIPPED_FILES))}; ASCII-art entries dropped",
            "fortunes train / val": f"{len(split.train)} / {len(split.val)} (seed {args.seed}, "
            f"{args.val_frac:.0%} held out)",
            "tokens train / val": f"{len(train_ids):,} / {val[:, 1:].numel():,}",
            "tokenizer": f"byte-level BPE, vocab {len(tokenizer)}, `{EOS}` = BOS/EOS/pad "
            f"(id {tokenizer.eos_token_id})",
            "architecture": f"GPT2LMHeadModel, {args.n_layer} layers, width {args.n_embd}, "
            f"{args.n_head} heads, {args.n_positions} positions, tied embeddings, dropout {args.dropout}",
            "parameters": f"{n_params:,}",
            "weights": f"fp16 safetensors, model dir {size_mb:.1f} MiB",
            "optimiser": f"AdamW (0.9, 0.95), lr {args.lr} with {args.warmup_steps} warmup steps "
            f"then time-based cosine to {args.lr * args.min_lr_ratio:g}, weight decay "
            f"{args.weight_decay}, grad clip {args.grad_clip}",
            "batch": f"{args.batch_size} x {args.block_size} tokens, random crops of the packed stream",
            "precision": f"fp32 weights, {'bf16 autocast' if args.bf16 else 'fp32'} training steps, fp32 eval",
            "training": f"{step} steps in {train_s / 60:.1f} min; best checkpoint at step {best_step}",
            "hardware": f"CPU, {args.threads} threads ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}",
            "val perplexity (fp32, best checkpoint)": f"{best_ppl:.2f}",
            "val perplexity (fp16 weights reloaded)": f"{ppl_fp16:.2f}",
            "prompts": f"{len(train_prompts)} train / {len(test_prompts)} test (test from val fortunes only)",
            "total script time": f"{(time.time() - t_start) / 60:.1f} min",
            "command": f"`{shlex.join(['python', 'scripts/train_tiny_lm.py', *sys.argv[1:]])}`",
        },
    )


if __name__ == "__main__":
    main()
