"""Proposal generators that read the prompt (for LanguageAwareRCNN)."""
from .glip_rpn import GLIPATSSProposalGenerator

__all__ = ["GLIPATSSProposalGenerator"]
