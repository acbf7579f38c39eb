"""Where tokenalign caches what it makes on first use (the demo preference set, HF copies of GGUF models):
`$TOKENALIGN_CACHE`, else ~/.cache/tokenalign. Deleting the directory is always safe: it is remade."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$TOKENALIGN_CACHE`, else ~/.cache/tokenalign."""
    return Path(os.environ.get("TOKENALIGN_CACHE") or "~/.cache/tokenalign").expanduser()
