"""What a model's images need before its network sees them, and what its answers are named by: one typed
object, written beside the logged model (preprocessing.json) and read from it or from a checkpoint."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Preprocessing:
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) the network takes
    background: tuple[int, int, int] = WHITE  # transparent pixels are laid on this colour
    temperature: float = 1.0  # the network divides its scores by it already; kept to say so

    @classmethod
    def of(cls, fields: dict) -> "Preprocessing":
        """From a checkpoint's metadata or a preprocessing.json; what older ones lack takes its default
        (no background: white; no temperature: 1, from before calibration)."""
        return cls(class_names=tuple(fields["class_names"]), image_shape=tuple(fields["image_shape"]),
                   background=tuple(fields.get("background", WHITE)), temperature=float(fields.get("temperature", 1.0)))

    @classmethod
    def read(cls, path: Path) -> "Preprocessing":
        return cls.of(json.loads(Path(path).read_text()))

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @property
    def note(self) -> str | None:
        """What predict tells its user about the confidences, if they are scaled."""
        if self.temperature == 1:
            return None
        return f"confidences calibrated by temperature scaling (T={self.temperature:.2f}, fitted on validation)"
