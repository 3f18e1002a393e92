"""bitconv folders in plain transformers: from_pretrained with bitconv's quantizer (and refused without bitconv),
load() as a thin call of it, pipelines, generate(), sentence-transformers, memory as stored, the weight cache,
and bad input (newer format, Hub offline, absent GPU, no Linear projections)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import bitconv
from bitconv.errors import FormatError, OptionError, SourceError
from bitconv.quantize.modeling import PackedLinear, set_weight_cache
from support.hub_cache import fake_hub_cache, use_hub_cache
from support.paths import REPO

IDS = torch.tensor([[5, 17, 100, 250, 3, 77]])


def _python(code: str, *args, bitconv_on_path: bool, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if bitconv_on_path:
        env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


WITHOUT_BITCONV = """
import sys
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
    print("loaded")
except Exception as exc:
    print(type(exc).__name__, exc)
print("bitconv imported:", any(m == "bitconv" or m.startswith("bitconv.") for m in sys.modules))
"""


def test_transformers_without_bitconv_refuses_the_folder_naming_bitconv(llama_folder, tmp_path):
    """transformers skips an unknown quant_method and would give random projections: the folder's config makes it
    stop instead, with a message that says what to install."""
    res = _python(WITHOUT_BITCONV, llama_folder, bitconv_on_path=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "loaded" not in res.stdout and "bitconv imported: False" in res.stdout
    assert "pip install bitconv, then import bitconv before from_pretrained" in res.stdout


WITH_BITCONV = """
import sys
import bitconv
assert "transformers" not in sys.modules, "import bitconv must stay light"
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
print(type(model.model.layers[0].self_attn.q_proj).__name__, model.dtype)
"""


def test_import_bitconv_then_plain_from_pretrained(llama_folder, tmp_path):
    res = _python(WITH_BITCONV, llama_folder, bitconv_on_path=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["PackedLinear", "torch.float16"]  # packed, at the stored float16


def test_load_is_from_pretrained_and_dequantize_is_transformers_dequantize(llama_folder):
    packed = bitconv.load(llama_folder, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(llama_folder, dtype=torch.float32)
    dense = bitconv.load(llama_folder, dtype=torch.float32, dequantize=True)
    assert type(packed) is type(plain) and packed.hf_quantizer.quantization_config.quant_method == "bitconv"
    assert not any(isinstance(m, PackedLinear) for m in dense.modules()) and not dense.is_quantized
    with torch.no_grad():
        a, b, c = packed(IDS).logits, plain(IDS).logits, dense(IDS).logits
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-5)
    assert "quantization_config" not in dense.config.to_dict()  # a float model save_pretrained can write


def test_load_leaves_the_callers_random_state_alone(llama_folder):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    bitconv.load(llama_folder)
    assert torch.equal(torch.rand(4), expected)


def test_pipeline_and_generate_run_packed(llama_folder):
    generator = pipeline("text-generation", model=str(llama_folder))
    assert isinstance(generator.model.model.layers[0].mlp.down_proj, PackedLinear)
    text = generator("To be, or not", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    tokenizer = AutoTokenizer.from_pretrained(llama_folder)
    dense = bitconv.load(llama_folder, dequantize=True)
    ids = tokenizer("To be, or not", return_tensors="pt").input_ids
    assert text == tokenizer.decode(dense.generate(ids, max_new_tokens=6, do_sample=False)[0])


def test_weight_cache_trades_memory_for_speed(llama_folder):
    model = bitconv.load(llama_folder, dtype=torch.float32)
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        decoded_each_time = model(IDS).logits
        assert layer._decoded is None  # on a CPU the default keeps only the codes
        set_weight_cache(model, True)
        cached = model(IDS).logits
        assert layer._decoded is not None and torch.equal(cached, decoded_each_time)
        model.to(torch.float64)  # a cached weight of the old dtype is dropped, not reused
        assert layer._decoded is None and model(IDS.clone()).logits.dtype == torch.float64


def test_hub_id_from_the_cache_and_offline(llama_folder, tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, fake_hub_cache(tmp_path, llama_folder, "someone/llama-1.58"))
    model = bitconv.load("someone/llama-1.58")
    assert isinstance(model.model.layers[1].self_attn.o_proj, PackedLinear)
    with pytest.raises(SourceError, match="cannot get Hub model 'someone/absent'.*HF_HUB_OFFLINE") as error:
        bitconv.load("someone/absent")
    assert "\n" not in str(error.value)


def test_newer_format_version_asks_to_upgrade_in_one_line(llama_folder, tmp_path):
    import shutil

    folder = shutil.copytree(llama_folder, tmp_path / "future")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    for load in (bitconv.load, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(FormatError, match="format version 99.*upgrade bitconv") as error:
            load(folder)
        assert "\n" not in str(error.value)


def test_device_map_asking_for_an_absent_gpu(llama_folder):
    absent = f"cuda:{torch.cuda.device_count()}"
    for load in (bitconv.load, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(OptionError, match=f"device_map asks for {absent}, but this machine has"):
            load(llama_folder, device_map=absent)


def test_not_a_bitconv_folder(llama_folder):
    with pytest.raises(FormatError, match="not a bitconv output folder"):
        bitconv.load(llama_folder.parent / "source")


def test_packed_model_is_not_saved_by_transformers(llama_folder, tmp_path):
    with pytest.raises(ValueError, match="not serializable"):
        bitconv.load(llama_folder).save_pretrained(tmp_path / "saved")


def test_projections_that_are_not_linear_plan_nothing_and_refuse_in_one_line(tmp_path):
    """MobileNetV2's blocks are convolutions: the plan says nothing would be quantized and why, convert says so."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    MobileNetV2ForImageClassification(MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=3)) \
        .save_pretrained(tmp_path / "mobilenet")
    plan = bitconv.convert(tmp_path / "mobilenet", tmp_path / "out", dry_run=True, progress=False).plan
    assert plan.quantized == [] and not (tmp_path / "out").exists()
    assert {r.reason for r in plan.rows} >= {"4-D: norms, biases and convolutions stay float16",
                                             "projection outside the repeated blocks (head); --only to quantize it"}
    with pytest.raises(SourceError, match="no quantizable layers found") as error:
        bitconv.convert(tmp_path / "mobilenet", tmp_path / "out", progress=False)
    assert "\n" not in str(error.value)


def test_convolutional_model_with_a_linear_head_converts_and_loads(tmp_path):
    """ResNet: 4-D convolutions stay float, 0-d batch-norm counters are written as 0-d, its head goes packed."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)) \
        .save_pretrained(tmp_path / "resnet")
    folder = bitconv.convert(tmp_path / "resnet", tmp_path / "out", progress=False).out
    model = bitconv.load(folder, dtype=torch.float32)
    assert isinstance(model.classifier[1], PackedLinear)
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32)).logits).all()


def _model_bytes(model) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
    return sum(storages.values())


@pytest.fixture(scope="module")
def minilm_folder(minilm_dir, tmp_path_factory):
    return bitconv.convert(minilm_dir, tmp_path_factory.mktemp("minilm") / "ternary", progress=False).out


@pytest.mark.slow
def test_minilm_is_held_at_the_stored_precision(minilm_folder):
    on_disk = sum(p.stat().st_size for p in minilm_folder.glob("*.safetensors"))
    assert _model_bytes(bitconv.load(minilm_folder)) <= 1.01 * on_disk  # fp16 tables as fp16, codes as codes
    assert _model_bytes(bitconv.load(minilm_folder, dtype=torch.float32)) > 1.8 * on_disk  # asked for float32


@pytest.mark.slow
def test_sentence_transformers_loads_the_folder(minilm_folder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = sentence_transformers.SentenceTransformer(str(minilm_folder), device="cpu")
    assert any(isinstance(m, PackedLinear) for m in encoder.modules())
    sentences = ["a ternary model", "still finds similar sentences"]
    got = encoder.encode(sentences, convert_to_tensor=True).float()
    model = bitconv.load(minilm_folder)
    batch = AutoTokenizer.from_pretrained(minilm_folder)(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1)
    mean = (hidden * mask).sum(1) / mask.sum(1)  # all-MiniLM-L6-v2: mean pooling, then unit length
    assert torch.allclose(got, torch.nn.functional.normalize(mean, dim=-1), atol=2e-3)

