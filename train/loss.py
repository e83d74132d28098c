"""CLIP's symmetric contrastive loss, and the all-gather that makes it see the global batch.

Stage: `train`. In: L2-normalised image and text features (n, d) whose row i is a pair, and the logit
scale exp(t). Out: a scalar loss. This is the paper's pseudo-code (Radford et al. 2021, Figure 3):
`logits = scale * I @ T.T; loss = (CE(logits, arange) + CE(logits.T, arange)) / 2`.

Distributed: every rank gathers all ranks' features and computes the loss over the whole batch, as
open_clip's `ClipLoss` does by default (`gather_with_grad=False, local_loss=False`). `all_gather` returns
tensors without autograd history, so the local slot is replaced by the local tensor: gradients flow into
the features this rank computed. Each rank then holds dL/d(its features), exactly, and DDP's gradient
averaging divides the sum by the world size; train.py multiplies the loss by the world size before
backward so the update equals a single process's update on the global batch (tested in
tests/test_train_loss.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies over the batch similarity matrix."""
    logits_per_image = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's features in rank order; only this rank's slot keeps its gradient.

    Every rank must pass the same batch size (all_gather needs equal shapes): the loader drops the last
    partial batch when training with more than one rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return image_features, text_features
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered = []
    for local in (image_features, text_features):
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        parts[rank] = local
        gathered.append(torch.cat(parts))
    return gathered[0], gathered[1]
