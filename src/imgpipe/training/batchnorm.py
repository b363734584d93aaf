"""Batch-norm statistics that belong to the weights ("precise BN": Wu and Johnson, Rethinking "Batch" in
BatchNorm, 2021).

A batch-norm layer normalizes by each batch's own statistics in training and by running averages in
evaluation. The averages trail the weights: with torchvision's momentum of 0.01 (MobileNetV3, EfficientNet),
a few hundred steps on a small dataset leave them near their starting values, and a network that fits its
training images predicts one class in evaluation. Re-estimated with the current weights, as plain averages
over a fixed sample of training batches, they make evaluation score what the weights learned.
"""

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgpipe.training.distributed import SINGLE, ProcessGroup


def learning_norms(model: nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers whose running statistics training updates (a frozen backbone's are kept)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and m.training]


@torch.no_grad()
def reestimate(model: nn.Module, batches: Iterable[torch.Tensor], group: ProcessGroup = SINGLE) -> int:
    """Replace the running statistics of `learning_norms(model)` by their averages over `batches` (uint8
    images, the model's input; iterated only if there is a layer to re-estimate). With several ranks each
    passes its share of every batch and the averages are averaged, so every rank holds the same statistics.
    The model is left in training mode. Returns the number of batches used (0: no batch-norm layer)."""
    model.train()
    norms = learning_norms(model)
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch weighs the same
    model.eval()  # dropout off; only the norms see batches as in training
    for norm in norms:
        norm.train()
    used = 0
    for images in batches:
        model(images)
        used += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        if group.world > 1:
            norm.running_mean.copy_(group.sum(norm.running_mean) / group.world)
            norm.running_var.copy_(group.sum(norm.running_var) / group.world)
    model.train()
    return used
