"""Streaming contrastive (CLIP) trainer. Not built yet: see issue 6."""
