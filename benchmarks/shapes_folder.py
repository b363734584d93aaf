"""A small RGBA image folder to try the model zoo on, offline: circles, squares and triangles.

    python benchmarks/shapes_folder.py OUT [--per-class 100] [--size 64] [--seed 0]

Writes OUT/<shape>/<n>.png: each a filled shape of a random colour, size and position on a
transparent background (the logos seed's layout: one folder per class, RGBA PNGs). Then, e.g.:

    dvc exp run -S data.dataset=imagefolder -S data.path=OUT -S 'train.variants=[cnn,resnet18,mobilenet_v3_small]'
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def draw(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    side = rng.uniform(0.35, 0.8) * size
    left, top = rng.uniform(0, size - side, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(160, 256)),)
    box = (left, top, left + side, top + side)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(left + side / 2, top), (left, top + side), (left + side, top + side)], fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for shape in SHAPES:
        (args.out / shape).mkdir(parents=True, exist_ok=True)
        for n in range(args.per_class):
            draw(shape, args.size, rng).save(args.out / shape / f"{n:04d}.png")
    print(f"{len(SHAPES) * args.per_class} images of {args.size}x{args.size} in {args.out}")


if __name__ == "__main__":
    main()
