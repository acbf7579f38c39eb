"""One training run: its directory and resume, processes, loops, checkpoints, preflight and lock."""
