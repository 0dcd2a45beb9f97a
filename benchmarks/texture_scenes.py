"""Scenes made without annoboot, for probing encoders in context on data they never saw.

  python benchmarks/texture_scenes.py OUT [--train 3000] [--test 1000] [--seed 11]

Writes OUT/train and OUT/test, each a folder of 128-px PNG scenes and its COCO instances.json
(kind coco_boxes reads them). Nothing here imports annoboot or follows its scene generator: 3-6
Fashion-MNIST items of 24-40 px (train items in train scenes, test items in test scenes) are
pasted without overlap, each through a mask of its own ink, onto a muted crop of one of
scikit-image's bundled natural images (camera, brick, grass, gravel, coins, ...; a random
zoom of 0.5-1.5 and contrast of 0.2-0.5 about mid grey). The background is natural texture, not
the crowded scenes' plaid: it is shared by every crop of a scene and says nothing about the
classes, as there, but of another kind. Needs scikit-image (the dev extra) and the Fashion-MNIST
files of docs/data.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
TEXTURES = ["camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "coffee", "astronaut", "chelsea",
            "rocket"]
CANVAS = 128


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def grey_textures() -> List[np.ndarray]:
    import skimage.data
    from skimage.color import rgb2gray

    textures = []
    for name in TEXTURES:
        image = getattr(skimage.data, name)()
        grey = rgb2gray(image) * 255 if image.ndim == 3 else image.astype(np.float64)
        textures.append(grey.astype(np.float32))
    return textures


def write_scenes(split: str, count: int, seed: int, root: Path) -> None:
    rng = np.random.default_rng(seed)
    prefix = "train" if split == "train" else "t10k"
    items = read_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
    textures = grey_textures()
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        texture = textures[rng.integers(len(textures))]
        side = min(int(CANVAS / rng.uniform(0.5, 1.5)), min(texture.shape) - 1)
        y, x = rng.integers(0, texture.shape[0] - side), rng.integers(0, texture.shape[1] - side)
        crop = np.asarray(Image.fromarray(texture[y:y + side, x:x + side]).resize((CANVAS, CANVAS), Image.BILINEAR))
        scene = 128 + (crop - crop.mean()) * rng.uniform(0.2, 0.5)
        placed: List[tuple] = []
        for _ in range(rng.integers(3, 7)):
            for _attempt in range(30):
                size = int(rng.integers(24, 41))
                x0, y0 = int(rng.integers(0, CANVAS - size + 1)), int(rng.integers(0, CANVAS - size + 1))
                if all(x0 + size <= px or px + ps <= x0 or y0 + size <= py or py + ps <= y0 for px, py, ps in placed):
                    break
            else:
                continue  # no room left for another item
            k = int(rng.integers(len(items)))
            item = np.asarray(Image.fromarray(items[k]).resize((size, size), Image.BILINEAR)).astype(np.float32)
            ink = np.clip(item / 48.0, 0, 1)  # the item's black surround lets the texture through
            region = scene[y0:y0 + size, x0:x0 + size]
            scene[y0:y0 + size, x0:x0 + size] = ink * item + (1 - ink) * region
            placed.append((x0, y0, size))
            annotations.append({"id": len(annotations), "image_id": index, "category_id": int(labels[k]),
                                "bbox": [x0, y0, size, size], "area": size * size, "iscrowd": 0})
        Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).save(root / f"{index:05d}.png")
        images.append({"id": index, "file_name": f"{index:05d}.png", "width": CANVAS, "height": CANVAS})
    categories = [{"id": c, "name": name} for c, name in enumerate(CLASS_NAMES)]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (root / "instances.json").write_text(json.dumps(instances))
    print(f"wrote {root}: {count} scenes, {len(annotations)} items")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    write_scenes("train", args.train, args.seed, Path(args.out) / "train")
    write_scenes("test", args.test, args.seed + 1, Path(args.out) / "test")


if __name__ == "__main__":
    main()
