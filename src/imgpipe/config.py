"""The settings dataclasses that params.yaml sections become, each validated on construction.

Light on purpose (no torch, no pandas): every stage reads its settings through here.
"""

from dataclasses import dataclass
from pathlib import Path

from imgpipe.errors import require

DEVICES = ("auto", "cuda", "mps", "cpu")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """How to train one variant: params.yaml `train:`, each key overridable under `models.<variant>`."""

    epochs: int = 30  # passes over the training split
    batch_size: int = 64  # images per optimizer step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam's L2 penalty on the weights
    seed: int = 0  # seeds weight initialization and batch order
    device: str = "auto"  # auto (cuda, else mps, else cpu), cuda, mps or cpu

    def __post_init__(self):
        require(_is_int(self.epochs) and self.epochs >= 1, "epochs", f"must be a whole number >= 1, got {self.epochs!r}")
        require(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", f"must be a whole number >= 1, got {self.batch_size!r}")
        require(_is_number(self.lr) and self.lr > 0, "lr", f"must be a number > 0, got {self.lr!r}")
        require(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", f"must be a number >= 0, got {self.weight_decay!r}")
        require(_is_int(self.seed), "seed", f"must be a whole number, got {self.seed!r}")
        require(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")


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
        require(isinstance(self.label_column, str), "label_column", f"must be a column name, got {self.label_column!r}")

    def require_path(self) -> Path:
        require(self.path is not None, "path", f"dataset {self.dataset!r} reads local files: set data.path")
        return self.path
