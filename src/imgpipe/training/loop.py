"""The training engine: batches are slices of a seeded permutation, served by the split's batch source
(imgpipe.training.batches: resident on the device as uint8 where it fits, else streamed from its memory-mapped
file); augmentation and normalization run on whole batches on the device, so no per-sample Python
runs in the loop. Networks train in bf16 autocast (convolutions in channels_last memory) where the
device computes bf16 natively (CUDA, recent CPUs: train.precision), and batch-norm statistics are
re-estimated with the current weights before each validation (imgpipe.training.batchnorm).

A training writes its full state after every epoch; run again with the same settings, it resumes
from the last finished epoch and ends exactly where an uninterrupted run would (deterministic mode).
"""

import copy
import csv
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from imgpipe.config import HOW_IT_RUNS, TrainConfig
from imgpipe.data.prepared import Prepared
from imgpipe.device import finish_queued, hardware, has_native_bf16, pick_device
from imgpipe.errors import ImgpipeError
from imgpipe.files import atomic_path
from imgpipe.lineage import code_version
from imgpipe.models.inference import score
from imgpipe.models.networks import Classifier, build_model, count_parameters, is_fitted
from imgpipe.training.batches import ResidentSplit, StreamedSplit, fits_on_device
from imgpipe.training.batchnorm import reestimate
from imgpipe.training.distributed import SINGLE, ProcessGroup, cuda_index, restart_count
from imgpipe.training.muon import ConvMuon


@dataclass
class TrainResult:
    model: Classifier  # the weights of the epoch with the best val accuracy (ties: lower val loss)
    history: list[dict] = field(default_factory=list)  # per epoch: losses, accuracies, elapsed seconds (and of steps alone)
    seconds: float = 0.0  # wall time of all epochs, validation included
    images_per_second: float = 0.0  # training images processed per second of that time
    best_epoch: int = 0  # the epoch whose weights were kept
    stopped_early: bool = False
    device: str = "cpu"
    data_on_device: bool = True  # the splits resident on the device (else streamed from their files)
    peak_memory_mb: float | None = None  # CUDA only
    precision: str = "fp32"  # what the gradient steps computed in: fp32, or bf16 (autocast) where train.precision chose it
    channels_last: bool = False  # the convolutions' memory layout during training
    hardware: str = ""  # the GPU, or the CPU model and cores (imgpipe.device.hardware)
    images_per_rank: list[int] = field(default_factory=list)  # an epoch's training images per process: [n] on one
    resumed: list[dict] = field(default_factory=list)  # each start again (torchrun's restart, a rerun): {"after_epoch": e}

    def summary(self) -> dict:
        """The figures of the kept epoch and of the run, as written to metrics/train/<variant>.json. Its train_seconds
        are the whole training's, each epoch's validation included; an epoch row's (history) are its gradient steps
        and batch-norm statistics alone, what the benchmarks compare."""
        kept = self.history[self.best_epoch - 1]
        metrics = {key: kept[key] for key in ("val_accuracy", "val_loss", "train_accuracy", "train_loss")}
        metrics |= {
            "parameters": count_parameters(self.model.net),
            "train_seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "epochs": len(self.history),
            "best_epoch": self.best_epoch,
            "data_on_device": self.data_on_device,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "hardware": self.hardware,
            "images_per_rank": self.images_per_rank,
            # Times it started again from its saved state (torchrun's restarts: train.max_restarts; a rerun after a
            # failure), and the last finished epoch each picked up after.
            "restarts": len(self.resumed),
            "resumed_after_epochs": [resume["after_epoch"] for resume in self.resumed],
        }
        if self.peak_memory_mb is not None:
            metrics["peak_memory_mb"] = round(self.peak_memory_mb, 1)
        return metrics


def batches(count: int, batch_size: int, generator: torch.Generator, world: int = 1) -> list[torch.Tensor]:
    """Index tensors of one epoch: a random permutation on the generator's device, in slices (in_batches)."""
    return in_batches(torch.randperm(count, device=generator.device, generator=generator), batch_size, world)


def in_batches(index: torch.Tensor, batch_size: int, world: int = 1) -> list[torch.Tensor]:
    """`index` in slices of batch_size; a last slice too small for each of the `world` ranks to take two images joins
    the one before: batch norm cannot normalize a single image where a layer works at 1x1 (a speedrun CNN's last
    block on the 8x8 digits, resnet18 at 32x32), and 1,221 images at batch 20 leave one."""
    parts = list(index.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) < 2 * world:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def batch_count(count: int, batch_size: int, world: int = 1) -> int:
    """How many slices in_batches makes of `count` images."""
    return len(in_batches(torch.arange(count), batch_size, world))


CUTOUT_CHANCE = 0.5  # of an image being cut out (Fashion-MNIST, 7x7, 8 epochs of the speedrun CNN: every image val 0.9315, half 0.9382)


def augment(images: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator,
            share: slice = slice(None), batch: int | None = None, cutout: int = 0) -> torch.Tensor:
    """Random crops of zero-padded images, random horizontal flips and cutout (a `cutout`-pixel square blanked to 0
    at a random place, clipped by the image's edges, in half the images), for a whole batch at once.
    `images` may be the `share` of a global batch of `batch` images (a rank's rows): the draws are the
    whole batch's, so every rank augments its rows as a single process would."""
    drawn = len(images) if batch is None else batch
    if crop_padding:
        b, _, h, w = images.shape
        padded = F.pad(images, (crop_padding,) * 4)
        shift = torch.randint(0, 2 * crop_padding + 1, (2, drawn), device=images.device, generator=generator)[:, share]
        rows = (torch.arange(h, device=images.device) + shift[0, :, None])[:, :, None]  # (B, H, 1)
        cols = (torch.arange(w, device=images.device) + shift[1, :, None])[:, None, :]  # (B, 1, W)
        index = torch.arange(b, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        mirrored = (torch.rand(drawn, device=images.device, generator=generator) < 0.5)[share]
        images = torch.where(mirrored[:, None, None, None], images.flip(-1), images)
    if cutout:
        _, _, h, w = images.shape
        centres = torch.stack([torch.randint(0, size, (drawn,), device=images.device, generator=generator) for size in (h, w)])
        chosen = (torch.rand(drawn, device=images.device, generator=generator) < CUTOUT_CHANCE)[share]
        top, left = (centres[:, share] - cutout // 2)[:, :, None, None]  # (B, 1, 1) each
        rows, cols = torch.arange(h, device=images.device)[:, None], torch.arange(w, device=images.device)
        inside = (rows >= top) & (rows < top + cutout) & (cols >= left) & (cols < left + cutout)  # (B, H, W)
        images = images.masked_fill((inside & chosen[:, None, None])[:, None], 0)
    return images


def on_device(config: TrainConfig, nbytes: int, device: torch.device) -> bool:
    """Whether the splits (nbytes of uint8 images) stay resident on the device: train.data_on_device."""
    if isinstance(config.data_on_device, bool):
        return config.data_on_device
    return fits_on_device(nbytes, device, config.resident_limit_mb)


def make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "muon":
        return ConvMuon(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig, optimizer, steps: int):
    """A per-step learning-rate schedule over the whole run (None: constant)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if config.schedule == "onecycle":
        # Each group peaks at its own learning rate (a head's may be a multiple of train.lr). Momentum stays
        # train.momentum: torch's default would cycle it between 0.85 and 0.95 whatever the user set (0 included).
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps,
                                                   cycle_momentum=False)
    return None


@dataclass
class LoopState:
    """What the loop carries from epoch to epoch, saved with the resumable state."""

    epoch: int = 0  # the last finished epoch
    best_loss: float = float("inf")  # lowest val loss so far (early stopping watches it)...
    loss_epoch: int = 0  # ...and the epoch that reached it
    best_score: tuple[float, float] = (-1.0, 0.0)  # (val accuracy, -val loss) of the kept weights
    best_epoch: int = 0
    best_weights: dict | None = None
    best_classes_predicted: int = 0  # how many classes the kept weights predict for the val images
    elapsed: float = 0.0  # seconds of training and validation so far
    training: float = 0.0  # of which the training alone, validation not: the gradient steps and batch norm's
    # re-estimation (the statistics the scored weights compute with); what a speed comparison with another loop times
    images_per_rank: list[int] = field(default_factory=list)  # the last epoch's training images, per process
    resumed: list[dict] = field(default_factory=list)  # each start again so far: {"after_epoch": the last finished epoch}
    finished: bool = False  # the last epoch ran, or early stopping ended the training: resuming only finishes it


def resume_key(model_name: str, model_settings: dict, data: Prepared, config: TrainConfig, device: torch.device,
               bf16: bool, steps_per_epoch: int) -> dict[str, str]:
    """What a resumable state must match, part by part so a mismatch can say which part differs:
    the model and every setting of what training computes (the precision as resolved: `auto` is bf16 on one
    machine, fp32 on another), the data, the training code, the kind of device (random generator states do
    not carry across kinds), and the steps an epoch takes: another process count may merge the last small batch
    where this one did not, and the saved schedule would run out of steps before the last epoch ends."""
    # The precision and device as asked are left out: as resolved they are here (bf16, device.type), so asking for
    # `fp32` where `auto` resolved to it sets nothing aside.
    computed = {key: value for key, value in asdict(config).items() if key not in (*HOW_IT_RUNS, "precision", "device")}
    settings = repr((model_name, sorted(model_settings.items()), computed, bf16))
    return {
        "settings": hashlib.blake2b(settings.encode(), digest_size=16).hexdigest(),
        "data": data.fingerprint,
        "code": code_version(__name__),
        "device": device.type,
        "steps": str(steps_per_epoch),
    }


KEY_PARTS = {"settings": "other settings", "data": "other data", "code": "other training code", "device": "another kind of device",
             "steps": "another number of steps an epoch (another process count)"}


def _saved_state(resume: Path, key: dict[str, str], device: torch.device, name: str) -> dict | None:
    """The state in `resume` if it matches `key`; otherwise it is moved aside with one line saying why."""
    try:
        saved = torch.load(resume, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a file cut short or not a state at all
        saved, why = None, f"it cannot be read ({type(error).__name__})"
    else:
        if not isinstance(saved, dict) or not isinstance(saved.get("key"), dict):
            why = "it was saved by an older imgpipe"
        else:
            why = next((f"it was saved with {KEY_PARTS[part]}" for part in KEY_PARTS if saved["key"].get(part) != key[part]), None)
    if why is None:
        return saved
    aside = resume.with_name(f"{resume.stem}.set-aside{resume.suffix}")
    try:
        os.replace(resume, aside)
    except FileNotFoundError:  # another rank of this training moved it first
        pass
    print(f"{name}: not resuming from {resume}: {why}; moved to {aside.name}, training from epoch 1", flush=True)
    return None


def _device_rng(device: torch.device) -> torch.Tensor | None:
    """The accelerator's default generator, which dropout draws from there (the CPU's is saved apart)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def _set_device_rng(device: torch.device, state: torch.Tensor | None) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state.cpu(), device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state.cpu())


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """train.precision: auto is bf16 where the device has it natively. Measured on a 2-core CPU with
    AVX512-BF16 (FashionMNIST, batch 128): TinyVGG 2.5-3x, an MLP 1.4x the images/s of fp32."""
    if precision != "auto":
        return precision == "bf16"
    return has_native_bf16(device)


def has_convolutions(net: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in net.modules())


OWN_THREADS = torch.get_num_threads()  # PyTorch's own choice at start-up (its cores, or OMP_NUM_THREADS): train.threads 0


def _configure(config: TrainConfig, device: torch.device) -> None:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or OWN_THREADS)  # 0 too: an earlier training in this process may have set 1
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    if config.deterministic != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(config.deterministic)  # imports torch._dynamo: seconds, so only on change
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic  # autotuning picks kernels by timing
        torch.backends.cudnn.deterministic = config.deterministic


@dataclass
class Setup:
    """What one training works with, from build to finish."""

    name: str  # the model's name, in messages
    config: TrainConfig
    device: torch.device
    model: Classifier
    train_split: ResidentSplit | StreamedSplit
    val_split: ResidentSplit | StreamedSplit
    group: ProcessGroup
    bf16: bool  # autocast to bf16 in the training steps
    channels_last: bool  # the memory layout bf16 and CUDA convolutions are fastest in
    resident: bool  # the splits on the device (else streamed from their files)

    @property
    def interactive(self) -> bool:
        return sys.stderr.isatty() and self.group.leader


@dataclass
class Stepper:
    """What takes the gradient steps: the optimizer and its schedule, the generator of batches and augmentation,
    and the module the steps run through (DistributedDataParallel with several ranks)."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    trained: nn.Module
    steps_per_epoch: int
    average: AveragedModel | None = None  # train.ema: the weights' moving average, validated and kept in their place

    def evaluated(self, model: Classifier) -> Classifier:
        """What validation scores, and the kept weights come from: the average where there is one."""
        return self.average.module if self.average is not None else model


def train(model_name: str, model_settings: dict, data: Prepared, config: TrainConfig, *,
          resume: Path | None = None, on_epoch: Callable[[dict], None] | None = None, group: ProcessGroup = SINGLE) -> TrainResult:
    """Build the named model (seeded) and fit it to data.train, validating on data.val every epoch.

    `resume`: a file holding the state after each finished epoch; a matching one is continued. The last epoch's
    state stays too, for the caller to delete once it has saved the result (a failure in between, while calibrating
    or writing the checkpoint, then costs a rerun seconds, not the training).
    `on_epoch`: called with each epoch's row of the history.
    `group`: the processes training together (imgpipe.training.distributed): each trains on its share of every
    batch, and the leader alone saves the resume state and reports; every rank returns the same result.
    """
    setup = build(model_name, model_settings, data, config, group)
    if is_fitted(setup.model.net):  # e.g. class centroids: one pass, no gradient steps
        return fit_in_one_pass(setup)
    stepper = make_stepper(setup)
    key = resume_key(model_name, model_settings, data, config, setup.device, setup.bf16, stepper.steps_per_epoch)
    result, state = restore(setup, stepper, key, resume)
    if state.resumed and resume is not None:  # where it picked up, kept should it fail again at once
        save_state(resume, key, setup, stepper, state, result.history)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.finished:
            break
        start = time.perf_counter()
        figures = train_epoch(setup, stepper, epoch)
        finish_queued(setup.device)  # the steps are queued, not done, when train_epoch returns
        state.training += time.perf_counter() - start
        row = end_epoch(setup, stepper.evaluated(setup.model), state, epoch, figures, start)
        result.history.append(row)
        stop = bool(config.patience) and epoch - state.loss_epoch >= config.patience
        state.finished = stop or epoch == config.epochs
        if resume is not None:
            save_state(resume, key, setup, stepper, state, result.history)
        if on_epoch is not None:  # after the state is saved: the epoch counts as finished
            on_epoch(row)
        if stop and group.leader and epoch < config.epochs:  # at the last epoch it stops anyway: not early
            print(f"{model_name}: stopping early after epoch {epoch}: no better val loss since epoch {state.loss_epoch}")
    result.stopped_early = state.finished and state.epoch < config.epochs
    finish(setup, state, result, data)
    return result


def build(model_name: str, model_settings: dict, data: Prepared, config: TrainConfig, group: ProcessGroup) -> Setup:
    """The device and its global settings, the seeded model, and the splits' batch sources."""
    device = pick_device(config.device)
    if device.type == "cuda" and group.world > 1:
        device = torch.device("cuda", cuda_index(group.local_rank))
        torch.cuda.set_device(device)
    _configure(config, device)
    net = build_model(model_name, data.image_shape, len(data.class_names), **model_settings)
    if hasattr(net, "load_pretrained"):  # named weights (torchvision's): here, not in build_model, which checkpoints use too
        net.load_pretrained()
    # Pretrained weights come with the normalization they were trained with; others use the data's own.
    mean, std = getattr(net, "normalization", None) or (data.mean, data.std)
    model = Classifier(net, mean, std, tta=config.tta).to(device)
    if group.rank > 0:  # every rank starts from the same weights; dropout then draws its own masks on each rank's share
        torch.manual_seed(config.seed + group.rank)  # (rank 0 keeps the seed's draws: one process trains as before)
    bf16 = trains_in_bf16(config.precision, device) and not is_fitted(net)  # a fit takes no gradient step: float32
    channels_last = has_convolutions(net) and (bf16 or device.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The splits go to the device once, still uint8 (4x smaller than float32), where they fit; else
    # they stream from their files. A fitted model (class centroids) takes its split whole, in one pass.
    resident = is_fitted(net) or on_device(config, data.train.images.nbytes + data.val.images.nbytes, device)
    train_split, val_split = ((ResidentSplit(split, device) if resident else StreamedSplit(split, device, config.stream_workers))
                              for split in (data.train, data.val))
    return Setup(model_name, config, device, model, train_split, val_split, group, bf16, channels_last, resident)


def fit_in_one_pass(setup: Setup) -> TrainResult:
    """A fitted model (class centroids) from its training split, in one pass."""
    model, train_split, val_split = setup.model, setup.train_split, setup.val_split
    start = time.perf_counter()
    model.net.fit(model.normalize(train_split.images), train_split.labels)
    row = _epoch_row(1, score(train_split.logits(model), train_split.labels), score(val_split.logits(model), val_split.labels),
                     time.perf_counter() - start)
    return TrainResult(model=model, history=[row], seconds=row["seconds"], best_epoch=1, device=setup.device.type,
                       images_per_second=len(train_split) / max(row["seconds"], 1e-9), data_on_device=setup.resident,
                       images_per_rank=[len(train_split)], **run_facts(setup))


def run_facts(setup: Setup) -> dict:
    """What the run computed in and on: the same settings give other last digits in other arithmetic or hardware."""
    return {"precision": "bf16" if setup.bf16 else "fp32", "channels_last": setup.channels_last, "hardware": hardware(setup.device)}


def make_stepper(setup: Setup) -> Stepper:
    config, model = setup.config, setup.model
    # Per-part learning rates (a head trained faster than its backbone), else every trainable parameter at lr.
    net = model.net
    parameters = net.parameter_groups(config.lr) if hasattr(net, "parameter_groups") else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, parameters)
    steps_per_epoch = batch_count(len(setup.train_split), config.batch_size, setup.group.world)
    schedule = make_schedule(config, optimizer, config.epochs * steps_per_epoch)
    generator = torch.Generator(device=setup.device).manual_seed(config.seed)
    # Buffers are not averaged (batch norm's step counts are whole numbers): they follow the model's, and
    # batch norm's are re-estimated with the averaged weights before each validation anyway.
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=False) if config.ema else None
    return Stepper(optimizer, schedule, generator, setup.group.wrap(model, setup.device), steps_per_epoch, average)


def restore(setup: Setup, stepper: Stepper, key: dict[str, str], resume: Path | None) -> tuple[TrainResult, LoopState]:
    """A new result and loop state, or those of the saved state in `resume` when it matches `key`."""
    result = TrainResult(model=setup.model, device=setup.device.type, data_on_device=setup.resident, **run_facts(setup))
    state = LoopState()
    saved = _saved_state(resume, key, setup.device, setup.name) if resume is not None and resume.exists() else None
    if saved is not None:
        setup.model.load_state_dict(saved["model"])
        stepper.optimizer.load_state_dict(saved["optimizer"])
        if stepper.schedule is not None:
            stepper.schedule.load_state_dict(saved["schedule"])
        if stepper.average is not None:
            stepper.average.load_state_dict(saved["average"])
        stepper.generator.set_state(saved["generator"].cpu())
        # Each rank's own generators: a rank's share of a batch draws its own dropout masks, so after unequal shares
        # the ranks' states differ. Resumed on another number of ranks, each takes the first's.
        rngs = saved["rngs"][setup.group.rank] if len(saved["rngs"]) == setup.group.world else saved["rngs"][0]
        torch.set_rng_state(rngs["cpu"].cpu())
        _set_device_rng(setup.device, rngs["device"])
        result.history = saved["history"]
        state = LoopState(**saved["state"])
        done = "its training finished" if state.finished else "resuming"
        if setup.group.leader:
            print(f"{setup.name}: {done} after epoch {state.epoch} in {resume}", flush=True)
    group = setup.group
    # Started again (torchrun's restart after a rank failed, or a rerun): the run records where it picked up. Any rank
    # may know (an agent that lost no process counts no restart): all agree, as all load the same state.
    started_again = torch.tensor(int(saved is not None or restart_count() > 0), device=setup.device)
    if group.sum(started_again).item():
        state.resumed.append({"after_epoch": state.epoch})
    if group.world > 1 and group.sum(torch.tensor(state.epoch, device=setup.device)).item() != state.epoch * group.world:
        raise ImgpipeError(f"{setup.name}: the ranks found different resume states in {resume}; every machine must "
                           "see the same project folder (or delete the resume state to start again)")
    return result, state


def train_epoch(setup: Setup, stepper: Stepper, epoch: int) -> dict[str, torch.Tensor]:
    """One pass over the training split in gradient steps; returns this rank's loss sum and correct count."""
    config, group, device, train_split = setup.config, setup.group, setup.device, setup.train_split
    setup.model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if setup.bf16 else nullcontext()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    order = batches(len(train_split), config.batch_size, stepper.generator, group.world)  # the global batches: every rank draws them
    shares = [group.share(len(index)) for index in order]
    progress = tqdm(train_split.batches([index[rows] for index, rows in zip(order, shares)]), total=stepper.steps_per_epoch,
                    desc=f"{setup.name} {epoch}/{config.epochs}", unit="batch", leave=False, disable=not setup.interactive)
    start = time.perf_counter()
    for step, ((images, labels), index, rows) in enumerate(zip(progress, order, shares)):
        if config.crop_padding or config.flip or config.cutout:
            images = augment(images, config.crop_padding, config.flip, stepper.generator, rows, batch=len(index), cutout=config.cutout)
        if setup.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = stepper.trained(images)
            if group.world == 1:
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            else:  # DDP averages the ranks' gradients: scaled so, the average is the global batch's mean loss
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing,
                                       reduction="sum") * (group.world / len(index))
        stepper.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stepper.optimizer.step()
        if stepper.schedule is not None:
            stepper.schedule.step()
        if stepper.average is not None:
            stepper.average.update_parameters(setup.model)
        loss_sum += loss.detach() * len(index) / group.world  # this rank's sum, on the device: no sync per step
        correct += (logits.argmax(1) == labels).sum()
        if setup.interactive and step % 20 == 0:  # a sync, so only now and then, and only on a terminal
            seen = min((step + 1) * config.batch_size, len(train_split))
            progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}",
                                 img_s=f"{seen / (time.perf_counter() - start):.0f}")
    return {"loss_sum": loss_sum, "correct": correct, "images": sum(rows.stop - rows.start for rows in shares)}


def end_epoch(setup: Setup, model: Classifier, state: LoopState, epoch: int, figures: dict[str, torch.Tensor], start: float) -> dict:
    """Validate `model` (the trained one, or its weights' average), keep its weights if they are the most accurate
    yet, and report: the epoch's row of the history."""
    group = setup.group
    # In float32, as evaluate, predict and the served model compute: the val figures that choose the kept
    # epoch are theirs, and batch norm's statistics are those of the activations they will see.
    if setup.config.bn_images:  # 0: the statistics training gathered, as they are (re-estimating resets them first)
        norms_start = time.perf_counter()
        reestimate(model, _norm_sample(setup.train_split, setup.config, group, setup.channels_last), group)
        finish_queued(setup.device)  # queued, not done: on the clock, as the steps are
        state.training += time.perf_counter() - norms_start
    else:  # every rank validates with the statistics the checkpoint (rank 0's weights) will hold
        group.share_buffers(model)
    val = _validate(model, setup.val_split, group)
    loss_sum, correct = group.sum(figures["loss_sum"]), group.sum(figures["correct"])
    mine = torch.zeros(group.world, dtype=torch.long, device=setup.device)
    mine[group.rank] = figures["images"]
    state.images_per_rank = group.sum(mine).tolist()  # evidence of who trained: each process's training images this epoch
    state.elapsed += time.perf_counter() - start
    seen = len(setup.train_split)
    row = _epoch_row(epoch, {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen}, val, state.elapsed)
    row["train_seconds"] = round(state.training, 4)
    if val["loss"] < state.best_loss:  # early stopping watches the loss...
        state.best_loss, state.loss_epoch = val["loss"], epoch
    if (val["accuracy"], -val["loss"]) > state.best_score:  # ...the weights kept are the most accurate
        state.best_score, state.best_epoch = (val["accuracy"], -val["loss"]), epoch
        state.best_weights = copy.deepcopy(model.state_dict())
        state.best_classes_predicted = val["classes_predicted"]
    if group.leader:
        _report(setup.name, row, setup.config.epochs, setup.interactive, images_per_second=seen / (time.perf_counter() - start))
    state.epoch = epoch
    return row


def save_state(resume: Path, key: dict[str, str], setup: Setup, stepper: Stepper, state: LoopState, history: list[dict]) -> None:
    """Everything a resumed training needs to go on exactly as this one would. Every rank calls it (it gathers their
    random generators' states); the leader writes."""
    rngs = setup.group.gather({"cpu": torch.get_rng_state(), "device": _device_rng(setup.device)})  # CPU tensors, all
    if not setup.group.leader:
        return
    with atomic_path(resume) as tmp:
        torch.save({
            "key": key, "model": setup.model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
            "schedule": stepper.schedule.state_dict() if stepper.schedule is not None else None,
            "average": stepper.average.state_dict() if stepper.average is not None else None,
            "generator": stepper.generator.get_state(), "rngs": rngs,
            "history": history, "state": asdict(state),
        }, tmp)


def finish(setup: Setup, state: LoopState, result: TrainResult, data: Prepared) -> None:
    """The kept weights, in the layout a checkpoint loads into, and the run's figures."""
    model = setup.model
    model.load_state_dict(state.best_weights)
    if setup.channels_last:  # the returned model computes as evaluate's will, bit for bit
        model = model.to(memory_format=torch.contiguous_format)
    if setup.group.leader and state.best_classes_predicted == 1 and len(set(data.val.labels.tolist())) > 1:
        print(f"warning: {setup.name}: the kept weights (epoch {state.best_epoch}) predict one class for every validation "
              "image: the model has collapsed (try a lower train.lr, more epochs, or check the labels)", flush=True)
    result.model = model
    result.best_epoch = state.best_epoch
    result.images_per_rank = state.images_per_rank
    result.resumed = state.resumed
    result.seconds = state.elapsed
    result.images_per_second = len(result.history) * len(setup.train_split) / max(result.seconds, 1e-9)
    if setup.device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(setup.device) / 2**20


def _norm_sample(split, config: TrainConfig, group: ProcessGroup, channels_last: bool) -> Iterator[torch.Tensor]:
    """The training images batch-norm statistics are re-estimated on: the same bn_images every epoch, drawn
    by a generator of their own (the loop's draws stay as they are), in training-size batches, unaugmented
    (as evaluation sees images). A generator: nothing is read for a network without batch norm."""
    device = split.labels.device
    count = min(config.bn_images, len(split))
    chosen = torch.randperm(len(split), device=device, generator=torch.Generator(device).manual_seed(config.seed))[:count]
    order = [index[group.share(len(index))] for index in in_batches(chosen, config.batch_size, group.world)]
    for images, _ in split.batches([index for index in order if len(index)]):
        yield images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _validate(model: nn.Module, split, group: ProcessGroup) -> dict[str, float]:
    """Validation loss and accuracy over the whole split, and how many classes were predicted; with several
    ranks, each scores its share and the sums are all-reduced, so every rank gets the same figures (and
    stops, or keeps, alike)."""
    rows = group.share(len(split))
    logits, labels = split.logits(model, rows), split.labels[rows]
    classes = torch.arange(logits.shape[1], device=logits.device)
    predicted = group.sum((logits.argmax(1)[:, None] == classes).any(0).long())  # (classes,): not bincount, nondeterministic on CUDA
    if group.world == 1:
        figures = score(logits, labels)
    else:
        sums = group.sum(torch.stack([F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(1) == labels).sum().float()]))
        figures = {"loss": sums[0].item() / len(split), "accuracy": int(sums[1].item()) / len(split)}
    return figures | {"classes_predicted": int((predicted > 0).sum().item())}


def _epoch_row(epoch: int, train: dict, val: dict, seconds: float) -> dict:
    return {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "seconds": round(seconds, 4)}


def _report(name: str, row: dict, epochs: int, interactive: bool, images_per_second: float) -> None:
    """One line per epoch on a terminal (under the bar); on logs (DVC, CI) about ten lines a run."""
    epoch = row["epoch"]
    if interactive or epoch in (1, epochs) or epoch % max(1, epochs // 10) == 0:
        print(f"{name} epoch {epoch}/{epochs}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} "
              f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} ({images_per_second:,.0f} img/s)",
              flush=True)


def write_curves(folder: Path, history: list[dict]) -> None:
    """loss.csv and accuracy.csv (epoch, train, val): one DVC plot each, swapped in as one folder.
    Written with the csv module: pandas would add a quarter second of import to every train stage."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for measure in ("loss", "accuracy"):
            with open(tmp / f"{measure}.csv", "w", newline="") as file:
                writer = csv.writer(file, lineterminator="\n")
                writer.writerow(["epoch", "train", "val"])
                writer.writerows([row["epoch"], row[f"train_{measure}"], row[f"val_{measure}"]] for row in history)
