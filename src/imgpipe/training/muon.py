"""Muon for convolution filters (train.optimizer: muon), SGD for everything else, in one optimizer.

Muon (Keller Jordan et al., 2024; the CIFAR-10 speedruns' airbench) steps each weight matrix along its momentum made
orthogonal: every direction of the update about the same size, so the rarely-seen directions learn as fast as the
common ones. A convolution's filters are a matrix of (out channels) x (in channels x kernel). Everything else takes
SGD with Nesterov momentum and weight decay, as train.optimizer: sgd with nesterov: true gives it: biases, batch
norm's scales and shifts, and every linear layer, hidden ones included (so on a network without convolutions, muon is
that SGD). Both kinds step at train.lr (or a part's own, where a network asks for one) and follow its schedule.
The plain form: no weight decay on the filters and none of airbench's per-step rescaling of each filter to a fixed
norm (behind batch norm, a filter's norm then grows and its steps shrink relative to it).
"""

import torch

# Newton-Schulz quintic: five steps take a matrix's singular values near 1 (these coefficients trade exactness for
# speed: they land in about [0.7, 1.2], which trains as well; those under about 1/300 of the largest stay smaller).
COEFFICIENTS = (3.4445, -4.7750, 2.0315)
STEPS = 5
MOMENTUM = 0.6  # the filters' own momentum (airbench's, for runs of a few epochs); train.momentum is the rest's


def orthogonalized(matrix: torch.Tensor) -> torch.Tensor:
    """The matrix with its singular values moved near 1 (its singular vectors kept), in float32."""
    a, b, c = COEFFICIENTS
    x = matrix.float() / (matrix.norm() + 1e-7)  # singular values at most 1: where the iteration converges
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # x @ x.T on the smaller side
    for _ in range(STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def is_filter(parameter: torch.Tensor) -> bool:
    """A convolution's weights (out, in, height, width): what Muon steps."""
    return parameter.ndim == 4


class ConvMuon(torch.optim.Optimizer):
    """Muon on the filters among `parameters`, SGD (Nesterov momentum, weight decay) on the others."""

    def __init__(self, parameters, lr: float, momentum: float, weight_decay: float):
        given = list(parameters)  # tensors, or groups of them with their own lr (a fine-tuned network's parts)
        groups = []
        for group in given if given and isinstance(given[0], dict) else [{"params": given}]:
            members = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
            for muon in (True, False):
                chosen = [p for p in members if is_filter(p) == muon]
                groups += [{**group, "params": chosen, "muon": muon}] if chosen else []
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                if group["muon"]:
                    self._muon_step(parameter, group["lr"])
                else:
                    self._sgd_step(parameter, group["lr"], group["momentum"], group["weight_decay"])
        return loss

    def _muon_step(self, parameter: torch.Tensor, lr: float) -> None:
        grad, state = parameter.grad, self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buffer = state["momentum_buffer"]
        buffer.mul_(MOMENTUM).add_(grad)
        update = orthogonalized(grad.add(buffer, alpha=MOMENTUM).reshape(len(parameter), -1))  # Nesterov
        rows, columns = update.shape
        # Scaled so a tall matrix's update (fewer directions than rows) moves its rows, on average, as far as a wide one's.
        parameter.add_(update.reshape(parameter.shape).to(parameter.dtype), alpha=-lr * max(1.0, rows / columns) ** 0.5)

    def _sgd_step(self, parameter: torch.Tensor, lr: float, momentum: float, weight_decay: float) -> None:
        grad = parameter.grad.add(parameter, alpha=weight_decay) if weight_decay else parameter.grad
        state = self.state[parameter]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(momentum).add_(grad)
        parameter.add_(grad.add(state["momentum_buffer"], alpha=momentum), alpha=-lr)
