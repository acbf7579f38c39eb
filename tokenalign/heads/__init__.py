"""Reward, cost and token-level heads over a frozen LM's hidden states: the model, its losses, fitting it."""
