"""The scorer kinds, one module each; `tokenalign.rewards.registry.scorer_kinds()` imports them all."""
