"""A small ViT trained here in full precision on scikit-learn's bundled digits, for docs/image-classification.md.

No pretrained ViT installs offline, so the full-precision model is made here: the 1,797 8x8 digit images of
`sklearn.datasets.load_digits` are written as PNG files in an image folder (one sub-folder per digit), split
80/20 per class with a fixed seed, and a ViT (patches of 2x2 pixels, 4 layers of width 64) is trained on the
training part with plain PyTorch. Everything after that is `bitconv`: compare (post-training quantization),
recover (quantization-aware training), eval and report; docs/image-classification.md lists the commands.

    PYTHONPATH=. python docs/benchmarks/vit_digits.py --out runs/vit-digits
      -> runs/vit-digits/digits/{train,test}/<digit>/<index>.png and runs/vit-digits/fp (a ViT folder)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def write_image_folder(out: Path, test_fraction: float, seed: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(seed)
    for label in range(10):
        idx = [i for i in range(len(digits.target)) if digits.target[i] == label]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:  # pixel values 0..16 -> 0..255 grey levels
                pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")


def train_fp(images: Path, out: Path, epochs: int, seed: int) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from bitconv.data.images import read_images

    torch.manual_seed(seed)
    labels = [str(i) for i in range(10)]
    processor = ViTImageProcessor(do_resize=True, size={"height": 8, "width": 8}, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, num_labels=10,
                       id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = ViTForImageClassification(config)
    train = read_images(images / "train")
    pixels = processor(images=[train.image(i) for i in range(len(train))], return_tensors="pt")["pixel_values"]
    y = torch.tensor([labels.index(x) for x in train.labels])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * (len(y) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(y), (64,), generator=g)
        loss = F.cross_entropy(model(pixel_values=pixels[idx]).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write_image_folder(args.out / "digits", args.test_fraction, args.seed)
    train_fp(args.out / "digits", args.out / "fp", args.epochs, args.seed)


if __name__ == "__main__":
    main()
