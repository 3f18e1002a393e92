"""Labelled images, read the same way for `eval --task image-classify` and `recover --task image-classify`.

Two layouts:
- an image folder: one sub-folder per class, named by its label, holding the images (`digits/3/0017.png`);
  files whose suffix is not an image format's are skipped, hidden files and folders too;
- a `datasets` dataset saved with `save_to_disk` (one split: pass `saved/test`, not `saved`), with an Image
  column and a ClassLabel (or string/integer) label column.

Images are opened lazily (`ImageExamples.image(i)`, RGB); every image's header is read up front, so an
unreadable file fails before any model is loaded, with its path in the one-line message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bitconv.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DATASET_MARKERS = ("dataset_info.json", "state.json")  # what `Dataset.save_to_disk` writes


@dataclass
class ImageExamples:
    path: str
    names: list[str]  # how messages name each image: its path inside the folder, or "row N"
    labels: list[str]  # the class label of each image, as the folder or the dataset names it
    file_sha256: str  # one digest of every image's name, label and bytes (folder) or the dataset's fingerprint
    loader: Callable[[int], object] = field(repr=False)  # i -> PIL image

    def image(self, i: int):
        """The i-th image as an RGB PIL image."""
        try:
            img = self.loader(i)
            img.load()
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated and corrupt files
            raise DataError(f"{self.path}: image {self.names[i]} cannot be decoded ({exc}); "
                            "replace or remove it") from None
        return img if img.mode == "RGB" else img.convert("RGB")

    def __len__(self) -> int:
        return len(self.labels)


def read_images(path: str | Path, max_examples: int | None = None) -> ImageExamples:
    """The labelled images at `path` (an image folder or a saved `datasets` split; see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: image data not found; pass a folder with one sub-folder per class")
    if not path.is_dir():
        raise DataError(f"{path}: is a file; image data is a folder with one sub-folder per class "
                        "(or a `datasets` split saved with save_to_disk)")
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(f"{path}: a saved DatasetDict; pass one split's folder ({', '.join(splits)})")
    if any((path / marker).is_file() for marker in DATASET_MARKERS):
        examples = _read_saved_dataset(path, max_examples)
    else:
        examples = _read_image_folder(path, max_examples)
    classes = sorted(set(examples.labels))
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ({classes[0]!r}); image classification needs at least two "
                        "(one sub-folder per class)")
    return examples


def _read_image_folder(root: Path, max_examples: int | None) -> ImageExamples:
    from PIL import Image

    by_class: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(folder).parts))
        if files:
            by_class[folder.name] = files
    if not by_class:
        raise DataError(f"{root}: no images found; put them in one sub-folder per class, named by the label "
                        f"({', '.join(IMAGE_SUFFIXES[:4])}, ... files)")
    # classes interleaved (the first image of each class, then the second, ...): a --max-examples prefix
    # holds every class, and the order is fixed by the file names alone
    longest = max(len(files) for files in by_class.values())
    order = [(label, files[i]) for i in range(longest) for label, files in by_class.items() if i < len(files)]
    if max_examples is not None:
        order = order[:max_examples]
    digest = hashlib.sha256()
    names, labels, files = [], [], []
    for label, file in order:
        name = file.relative_to(root).as_posix()
        try:
            with Image.open(file) as img:  # the header only: format and size
                img.size  # noqa: B018
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{file}: not a readable image ({exc}); replace or remove it") from None
        digest.update(f"{name}\0{label}\0".encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
        names.append(name)
        labels.append(label)
        files.append(file)
    return ImageExamples(str(root), names, labels, digest.hexdigest(), lambda i: Image.open(files[i]))


def _read_saved_dataset(path: Path, max_examples: int | None) -> ImageExamples:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a saved dataset needs the `datasets` package: pip install datasets") from None
    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"{path}: cannot read the saved dataset ({str(exc).splitlines()[0]})") from None
    features = data.features
    image_cols = [name for name, feat in features.items() if isinstance(feat, datasets.Image)]
    label_cols = [name for name, feat in features.items() if isinstance(feat, datasets.ClassLabel)]
    label_cols += [name for name in ("label", "labels") if name in features and name not in label_cols]
    if not image_cols or not label_cols:
        raise DataError(f"{path}: the dataset needs an Image column and a label column; it has "
                        f"{', '.join(f'{n} ({type(f).__name__})' for n, f in features.items())}")
    image_col, label_col = image_cols[0], label_cols[0]
    if max_examples is not None:
        data = data.select(range(min(max_examples, len(data))))
    if len(data) == 0:
        raise DataError(f"{path}: the dataset has no rows")
    feature = features[label_col]
    raw = data[label_col]
    labels = [feature.int2str(v) if isinstance(feature, datasets.ClassLabel) else str(v).strip() for v in raw]
    names = [f"row {i}" for i in range(len(data))]
    return ImageExamples(str(path), names, labels, data._fingerprint, lambda i: data[i][image_col])
