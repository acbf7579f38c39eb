"""Reward, cost and token-level heads over a frozen LM's hidden states: the model, the states it reads, its losses."""
