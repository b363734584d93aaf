"""The data card: what the prepared splits hold (images per class and split, size, channels, statistics), thin
classes flagged, and what fetch decided about the data on the way, one sentence each."""

from collections.abc import Sequence

from imgpipe.data.imageset import SPLITS
from imgpipe.data.prepared import Prepared

FEW_EXAMPLES = 5  # a class with fewer images than this in a split is flagged on the data card


def data_card(prepared: Prepared, decisions: Sequence[str] = ()) -> dict:
    """Per split the images per class, plus image size, channels and statistics; thin classes flagged;
    and the decisions fetch made about the data (e.g. why it has 3 channels), one sentence each."""
    channels, height, width = prepared.image_shape
    splits = {split: getattr(prepared, split) for split in SPLITS}
    flagged = [
        f"{split}: class {name!r} has only {count} image{'s' if count != 1 else ''}"
        for split, images in splits.items()
        for name, count in images.class_counts().items()
        if count < FEW_EXAMPLES
    ]
    return {
        "classes": list(prepared.class_names),
        "image_size": [height, width],
        "channels": channels,
        "mean": list(prepared.mean),
        "std": list(prepared.std),
        "splits": {split: {"images": len(images), "per_class": images.class_counts()} for split, images in splits.items()},
        "flagged": flagged,
        "decisions": list(decisions),
    }
