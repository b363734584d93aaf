"""Batch-norm statistics re-estimated with the current weights (imgpipe.training.batchnorm): evaluation scores what
training mode scores, the statistics are the plain averages over the sample, a frozen backbone keeps its
own, and a run whose predictions collapse onto one class says so."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgpipe.config import TrainConfig
from imgpipe.models import networks as models
from imgpipe.models.inference import predict_logits
from imgpipe.training.batchnorm import learning_norms, reestimate

FAST = TrainConfig(epochs=3, batch_size=64, lr=0.01, device="cpu", precision="fp32")


class SlowNorm(nn.Module):
    """One convolution and a batch norm whose running statistics barely move (momentum 0.001, a hundredth of
    torch's default, as torchvision's 0.01 is on a small dataset), over activations far from the statistics
    they start at (mean 0, variance 1): evaluated with its running statistics, it normalizes wrongly."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, momentum=0.001)
        self.head = nn.Linear(4 * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) + 50  # (B, 4, H, W), far from mean 0
        return self.head(F.relu(self.norm(x)).flatten(1))


@pytest.fixture
def slow_norm(monkeypatch):
    monkeypatch.setitem(models.MODELS, "slow_norm", SlowNorm)
    return "slow_norm"


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, training_mode: bool) -> float:
    if training_mode:  # the statistics of the batch itself: what the weights were fitted with
        model.train()
        with torch.no_grad():
            logits = model(images)
    else:
        logits = predict_logits(model, images)
    return (logits.argmax(1) == labels).float().mean().item()


def test_evaluation_scores_what_training_mode_scores_once_statistics_are_reestimated(digits_prepared, slow_norm):
    from imgpipe.training.loop import train

    val = torch.from_numpy(digits_prepared.val.images), torch.from_numpy(digits_prepared.val.labels)
    stale = train(slow_norm, {}, digits_prepared, replace(FAST, bn_images=0)).model
    assert accuracy(stale, *val, training_mode=True) > 0.85
    assert accuracy(stale, *val, training_mode=False) < 0.5  # the running statistics are still near (0, 1)

    fresh = train(slow_norm, {}, digits_prepared, FAST).model
    in_training = accuracy(fresh, *val, training_mode=True)
    assert in_training > 0.85
    assert accuracy(fresh, *val, training_mode=False) == pytest.approx(in_training, abs=0.03)


def test_bn_images_0_keeps_the_statistics_training_gathered(digits_prepared):
    from imgpipe.training.loop import train

    result = train("cnn", {"channels": [4], "batch_norm": True}, digits_prepared, replace(FAST, epochs=2, bn_images=0))
    norms = [m for m in result.model.modules() if isinstance(m, nn.BatchNorm2d)]
    steps = result.best_epoch * -(-len(digits_prepared.train) // FAST.batch_size)  # the kept epoch's, one per step
    assert norms and [norm.num_batches_tracked.item() for norm in norms] == [steps] * len(norms)
    for norm in norms:  # not reset to (0, 1)
        assert norm.running_mean.abs().max() > 0.01 and (norm.running_var - 1).abs().max() > 0.01


def test_statistics_are_the_averages_over_the_sample_and_momentum_is_kept():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.01), nn.Dropout(0.5), nn.BatchNorm2d(3))
    batches = [torch.randn(8, 1, 6, 6) * 3 + 2 for _ in range(4)]
    assert reestimate(net, iter(batches)) == 4
    with torch.no_grad():
        first = [net[0](batch) for batch in batches]  # what the first norm saw, batch by batch
        # What the second saw: the first's output normalized by the batch's own statistics (as in training), and no
        # dropout (as in evaluation).
        second = [nn.functional.batch_norm(out, None, None, net[1].weight, net[1].bias, training=True, eps=net[1].eps)
                  for out in first]
    for norm, seen in ((net[1], first), (net[3], second)):
        mean = torch.stack([out.mean((0, 2, 3)) for out in seen]).mean(0)
        variance = torch.stack([out.var((0, 2, 3), unbiased=True) for out in seen]).mean(0)
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var, variance, rtol=1e-5, atol=1e-6)
    assert net[1].momentum == 0.01 and net[3].momentum == 0.1
    assert net.training and net[2].training  # left in training mode, as the loop expects


def test_a_network_without_batch_norm_reads_no_batch():
    def never():
        raise AssertionError("a batch was read")
        yield

    assert reestimate(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), never()) == 0


def test_a_frozen_backbone_keeps_its_statistics():
    pytest.importorskip("torchvision")
    from imgpipe.models.zoo import TorchvisionNet

    net = TorchvisionNet((3, 32, 32), 2, "resnet18", freeze="backbone")
    before = {name: buffer.clone() for name, buffer in net.named_buffers()}
    net.train()
    assert learning_norms(net) == []
    reestimate(net, iter([torch.randn(4, 3, 32, 32)]))
    assert all(torch.equal(buffer, before[name]) for name, buffer in net.named_buffers())


class OneClass(nn.Module):
    """A network that answers class 0 whatever the image: a collapsed model, for the warning."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.num_classes, device=x.device)
        logits[:, 0] = 1.0
        return logits + self.scale * x.flatten(1)[:, :1]  # a gradient, so an optimizer step is possible


def test_a_run_predicting_one_class_says_so_in_one_warning_line(digits_prepared, monkeypatch, capsys):
    from imgpipe.training.loop import train

    monkeypatch.setitem(models.MODELS, "one_class", OneClass)
    train("one_class", {}, digits_prepared, replace(FAST, epochs=1, lr=1e-9))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: one_class: the kept weights (epoch 1) predict one class for every validation image: "
                        "the model has collapsed (try a lower train.lr, more epochs, or check the labels)"]

    train("linear", {}, digits_prepared, replace(FAST, epochs=1))
    assert "warning:" not in capsys.readouterr().out
