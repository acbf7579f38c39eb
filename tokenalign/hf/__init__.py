"""tokenalign's agents where users generate text: `transformers`' `generate` (`AgentLogitsProcessor`)."""
from tokenalign.hf.logits_processor import AgentLogitsProcessor

__all__ = ["AgentLogitsProcessor"]
