"""How a prompt becomes the token ids an LM continues: the one encoding the engine, teacher forcing and heads share."""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A prompt's ids as its LM starts a text: with the tokenizer's start tokens (Gemma's and Llama's BOS;
    without it Gemma 3 degenerates at once: " language, language, ..."), and an empty prompt as EOS alone
    for GPT-2 style LMs, which add none."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id != tokenizer.bos_token_id:
        ids = ids[:-1]  # a tokenizer that also closes texts: a prompt is continued, not closed
    return ids or [tokenizer.eos_token_id]
