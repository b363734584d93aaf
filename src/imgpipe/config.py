"""The settings dataclasses that params.yaml sections become, each validated on construction.

Light on purpose (no torch, no pandas): every stage reads its settings through here.
"""

from dataclasses import dataclass
from pathlib import Path

from imgpipe.errors import is_int, is_number, require

DEVICES = ("auto", "cuda", "mps", "cpu")


OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("auto", "bf16", "fp32")


# Settings of how a training runs, not what it computes: a resumed run may change them (more restarts, fewer GPUs left).
# The first four give the same weights bit for bit (the same batches from either source): no DVC params of the train
# stage, nor part of a run's seed group; the process and thread counts change the order of floating-point sums.
SAME_WEIGHTS = ("max_restarts", "stream_workers", "data_on_device", "resident_limit_mb")
HOW_IT_RUNS = (*SAME_WEIGHTS, "devices", "threads")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one variant: params.yaml `train:`, each key overridable under `models.<variant>`."""

    epochs: int = 30  # most passes over the training split
    batch_size: int = 64  # images per optimizer step
    optimizer: str = "adam"  # sgd, adam, adamw or muon (convolution filters by Muon, the rest by SGD with Nesterov momentum)
    lr: float = 1e-2  # (peak) learning rate
    momentum: float = 0.9  # sgd, and muon's SGD part
    nesterov: bool = False  # sgd only: Nesterov momentum
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    schedule: str = "cosine"  # constant, cosine (anneal to 0) or onecycle (warm up, then anneal)
    label_smoothing: float = 0.0  # share of the target spread over the other classes
    patience: int = 0  # stop after this many epochs without a better val loss; 0 = never stop early
    crop_padding: int = 0  # augmentation: random crops of images padded by this many pixels; 0 = off
    flip: bool = False  # augmentation: random horizontal flips
    cutout: int = 0  # augmentation: a square of this many pixels blanked to 0 at a random place in half the images; 0 = off
    # Test-time augmentation: an image's scores averaged with its mirror image's wherever the model answers
    # (validation, evaluate, predict, the served model); for classes a mirror leaves alone (not digits).
    tta: bool = False
    # Exponential moving average of the weights: after each step the average moves (1 - ema) of the way to the
    # weights; validated, kept and saved in their place. 0 = off (the weights themselves).
    ema: float = 0.0
    seed: int = 0  # seeds weight initialization, batch order and augmentation
    deterministic: bool = False  # bit-identical reruns: deterministic algorithms, no cuDNN autotuning
    threads: int = 0  # CPU threads; 0 = PyTorch's own choice
    device: str = "auto"  # auto (cuda, else mps, else cpu), cuda, mps or cpu
    # Arithmetic of the forward pass: bf16 autocast (weights and optimizer stay float32; convolutions in
    # channels_last memory), or fp32. auto: bf16 where the device has it natively (CUDA; CPUs with AVX512-BF16
    # or AMX, where TinyVGG trained at 2.5-3x and an MLP at 1.4x the images/s of fp32), else fp32.
    precision: str = "auto"
    # Batch-norm statistics re-estimated with the current weights on this many training images before
    # each validation, so evaluation mode scores what the weights learned ("precise BN"); 0 = off.
    bn_images: int = 4096
    # Where the train and val splits are read from: true = copied to the device once (fastest), false =
    # streamed from their memory-mapped files batch by batch (any size), auto = true when they fit:
    # at most resident_limit_mb together and, on CUDA, at most half the GPU's free memory.
    data_on_device: bool | str = "auto"
    resident_limit_mb: int = 1024  # MB: auto's limit (uint8 images, 1 byte per pixel and channel)
    # Processes gathering streamed batches; 0 = the training process itself. auto: 0 on a CPU, whose
    # cores the training uses (a worker there costs more than it gathers), up to 4 for a GPU.
    stream_workers: int | str = "auto"
    # Processes training together, one per device (torchrun + DistributedDataParallel): 1, a number, or
    # auto (every visible GPU). batch_size stays the global batch, so any count follows one schedule.
    devices: int | str = 1
    # With several processes: how many times torchrun restarts them all when one fails (each rank resumes from the
    # last finished epoch's state); then the stage fails. 0 = fail at the first.
    max_restarts: int = 3

    def __post_init__(self):
        def whole(name, least):
            value = getattr(self, name)
            require(is_int(value) and value >= least, name, f"must be a whole number >= {least}, got {value!r}")

        def choice(name, options):
            value = getattr(self, name)
            require(value in options, name, f"must be one of {', '.join(options)}, got {value!r}")

        whole("epochs", 1)
        whole("batch_size", 1)
        choice("optimizer", OPTIMIZERS)
        require(is_number(self.lr) and self.lr > 0, "lr", f"must be a number > 0, got {self.lr!r}")
        require(is_number(self.momentum) and 0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum!r}")
        require(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", f"must be a number >= 0, got {self.weight_decay!r}")
        choice("schedule", SCHEDULES)
        require(is_number(self.ema) and 0 <= self.ema < 1, "ema", f"must be in [0, 1) (0: off), got {self.ema!r}")
        require(is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing",
                f"must be in [0, 1), got {self.label_smoothing!r}")
        whole("patience", 0)
        whole("crop_padding", 0)
        whole("cutout", 0)
        whole("seed", 0)
        whole("threads", 0)
        for name in ("nesterov", "flip", "tta", "deterministic"):
            require(isinstance(getattr(self, name), bool), name, f"must be true or false, got {getattr(self, name)!r}")
        choice("device", DEVICES)
        choice("precision", PRECISIONS)
        whole("bn_images", 0)
        require(not (self.ema and self.bn_images == 0), "bn_images",  # the average's own are its initial ones
                "must be > 0 with train.ema: the weight average's batch-norm statistics come only from re-estimation")
        whole("max_restarts", 0)
        require(self.data_on_device in ("auto", True, False), "data_on_device", f"must be auto, true or false, got {self.data_on_device!r}")
        whole("resident_limit_mb", 0)
        require(self.stream_workers == "auto" or (is_int(self.stream_workers) and self.stream_workers >= 0), "stream_workers",
                f"must be a whole number >= 0 or auto, got {self.stream_workers!r}")
        require(self.devices == "auto" or (is_int(self.devices) and self.devices >= 1), "devices",
                f"must be a whole number >= 1 or auto, got {self.devices!r}")


ON_BAD_FILE = ("error", "skip")


@dataclass(frozen=True)
class DataConfig:
    """How fetch reads the dataset: params.yaml `data:` (each source uses the keys it needs)."""

    dataset: str = "digits"  # the source's name
    path: Path | None = None  # csv: the training CSV; imagefolder, idx: the folder
    test_path: Path | None = None  # csv: an optional test CSV
    mirror: str | None = None  # torchvision sets: a URL or local folder holding the original files
    label_column: str = "label"  # csv: the column holding the labels
    image_size: tuple[int, int] | None = None  # (height, width): csv layout, imagefolder resize
    channels: int | None = None  # 1 or 3: csv layout, imagefolder conversion; None: the data's own
    background: tuple[int, int, int] = (255, 255, 255)  # imagefolder: RGB that transparency is laid on
    on_bad_file: str = "error"  # imagefolder: "error" or "skip" for a file that is not an image
    class_names: tuple[str, ...] | None = None  # names of the labels, in sorted label order

    def __post_init__(self):
        require(isinstance(self.dataset, str), "dataset", f"must be a source's name, got {self.dataset!r}")
        if self.image_size is not None:
            size = self.image_size
            require(isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size),
                    "image_size", f"must be [height, width] in pixels, got {size!r}")
        require(self.channels in (None, 1, 3), "channels", f"must be 1, 3 or null, got {self.channels!r}")
        bg = self.background
        require(isinstance(bg, (list, tuple)) and len(bg) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in bg),
                "background", f"must be an RGB triple of 0..255, got {bg!r}")
        require(self.on_bad_file in ON_BAD_FILE, "on_bad_file", f"must be one of {', '.join(ON_BAD_FILE)}, got {self.on_bad_file!r}")
        require(self.class_names is None or (isinstance(self.class_names, (list, tuple)) and len(self.class_names) > 0),
                "class_names", f"must be a list of names, got {self.class_names!r}")
        if self.class_names is not None:
            names = [str(name) for name in self.class_names]
            twice = next((name for name in names if names.count(name) > 1), None)
            require(twice is None, "class_names", f"lists {twice!r} twice: one name per class")
        require(isinstance(self.label_column, str), "label_column", f"must be a column name, got {self.label_column!r}")

    def require_path(self) -> Path:
        require(self.path is not None, "path", f"dataset {self.dataset!r} reads local files: set data.path")
        return self.path
