"""Image classification: the image reader (bitconv.data.images), `eval`/`compare`/`report --task image-classify`
and `recover --task image-classify` on a tiny ViT, `--device`, and their bad input (one line each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bitconv
from bitconv.data.images import read_images
from bitconv.errors import BitconvError, DataError, OptionError

N_CLASSES = 3


def _digit(label: int, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 grey image whose bright band (one row of 2x2 patches) says the class: easy to learn, different
    for every seed."""
    img = rng.integers(0, 60, (8, 8)).astype(np.uint8)
    img[2 * label:2 * label + 2] = 250
    return img


def _image_folder(root: Path, n_per_class: int, seed: int, classes: int = N_CLASSES) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(classes):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(_digit(label, rng), mode="L").save(root / str(label) / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("images")
    return _image_folder(base / "train", 24, 0), _image_folder(base / "test", 8, 1)


@pytest.fixture(scope="module")
def vit(tmp_path_factory, digits) -> Path:
    """A tiny ViT trained in full precision on the tiny image folder (the fp model PTQ and QAT start from)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit") / "vit-fp"
    torch.manual_seed(0)
    labels = [str(i) for i in range(N_CLASSES)]
    config = ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=N_CLASSES,
                       id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    train = read_images(digits[0])
    pixels = processor(images=[train.image(i) for i in range(len(train))], return_tensors="pt")["pixel_values"]
    y = torch.tensor([int(x) for x in train.labels])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_image_folder_reader_interleaves_classes_and_hashes_the_bytes(digits, tmp_path):
    data = read_images(digits[1])
    assert len(data) == 8 * N_CLASSES and data.names[:3] == ["0/000.png", "1/000.png", "2/000.png"]
    assert data.image(0).mode == "RGB" and data.image(0).size == (8, 8)
    assert read_images(digits[1], max_examples=4).labels == ["0", "1", "2", "0"]
    copy = _image_folder(tmp_path / "copy", 8, 1)
    (copy / "2" / "notes.txt").write_text("not an image: skipped")
    assert read_images(copy).file_sha256 == data.file_sha256
    _image_folder(tmp_path / "copy", 8, 2)  # the same names, other pixels
    assert read_images(copy).file_sha256 != data.file_sha256


def test_saved_datasets_split_reads_like_a_folder(digits, tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = read_images(digits[1])
    ds = datasets.Dataset.from_dict(
        {"image": [folder.image(i) for i in range(len(folder))], "label": [int(x) for x in folder.labels]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["0", "1", "2"])}))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    data = read_images(tmp_path / "saved" / "test")
    assert data.labels == folder.labels and data.names[0] == "row 0"
    assert np.array_equal(np.asarray(data.image(5)), np.asarray(folder.image(5)))
    with pytest.raises(DataError, match=r"saved: a saved DatasetDict; pass one split's folder \(test\)"):
        read_images(tmp_path / "saved")


def test_bad_image_folders_fail_in_one_line(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="empty: no images found; put them in one sub-folder per class"):
        read_images(tmp_path / "empty")
    one = _image_folder(tmp_path / "one", 3, 0, classes=1)
    with pytest.raises(DataError, match=r"one: only one class \('0'\); image classification needs at least two"):
        read_images(one)
    broken = _image_folder(tmp_path / "broken", 3, 0)
    (broken / "1" / "001.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken/1/001.png: not a readable image"):
        read_images(broken)
    with pytest.raises(DataError, match="image data not found"):
        read_images(tmp_path / "missing")


def test_eval_compare_report_image_classify(vit, digits, tmp_path):
    from bitconv.evaluate.compare import compare
    from bitconv.evaluate.run import EvalConfig, evaluate_model
    from bitconv.report.build import build_report

    config = EvalConfig("image-classify", str(digits[1]), latency_repeats=2, device="cpu")
    fp = evaluate_model(str(vit), config, progress=False)
    assert fp["metrics"]["mode"] == "image-classification" and fp["metrics"]["n_examples"] == 24
    assert fp["metrics"]["accuracy"] >= 0.9  # the rows the fixture drew are learnt
    assert fp["cost"]["latency"]["median_ms_per_image"] > 0 and fp["cost"]["latency"]["median_ms_per_token"] is None
    rows = compare(str(vit), tmp_path / "runs", "16,1.58", eval_config=config, isolate=False, progress=False,
                   log=lambda line: None)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    ternary = json.loads((tmp_path / "runs" / "bits-1.58-ternary.json").read_text())
    assert ternary["model"]["origin"] == "bitconv" and ternary["model"]["architecture"] == "ViTForImageClassification"
    half = json.loads((tmp_path / "runs" / "bits-16-fp16.json").read_text())
    assert half["metrics"]["accuracy"] == fp["metrics"]["accuracy"]
    report = build_report(tmp_path / "runs").markdown_tables()
    assert "images, one class per sub-folder" in report and "latency ms/image" in report


def test_recover_image_classify_trains_a_ternary_vit(vit, digits, tmp_path):
    from bitconv.quantize.config import QuantConfig
    from bitconv.train.config import RecoverConfig
    from bitconv.train.pipeline import recover

    cfg = RecoverConfig(task="image-classify", quant=QuantConfig.for_bits(1.58), distill=True, attention_weight=1.0,
                        hidden_weight=1.0, steps=30, batch_size=16, lr=3e-3)
    result = recover(str(vit), tmp_path / "vit-1.58", train=digits[0], eval=digits[1], config=cfg, device="cpu",
                     progress=False)
    m = result.metrics
    assert m["teacher"]["accuracy"] >= 0.9  # the source is the fp classifier: it is its own teacher
    assert m["after"]["accuracy"] >= 0.9 and m["steps"] == 30
    assert m["converted"]["accuracy"] == m["after"]["accuracy"]
    model = bitconv.load(tmp_path / "vit-1.58")
    assert type(model).__name__ == "ViTForImageClassification"
    assert (tmp_path / "vit-1.58" / "preprocessor_config.json").exists()
    other = _image_folder(tmp_path / "other", 2, 3, classes=4)  # a class '3' the training folder never had
    with pytest.raises(BitconvError, match=r"other: label '3' \(example 4\) is not in the training file's labels"):
        recover(str(vit), tmp_path / "o", train=digits[0], eval=other, config=cfg.with_(steps=1), device="cpu")
    with pytest.raises(OptionError, match="--augment edits texts"):
        cfg.with_(augment=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(run_cli, vit, digits, tmp_path):
    code, out, err = run_cli("eval", vit, "--task", "image-classify", "--data", digits[1], "--device", "cuda")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--device cuda: no CUDA GPU is visible to torch here; use --device cpu or auto" in err
    code, _, err = run_cli("eval", vit, "--task", "image-classify", "--data", digits[1], "--device", "gpu")
    assert code == 1 and "unknown --device 'gpu': use auto, cpu, cuda or cuda:N" in err
