import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import bitconv
from bitconv.errors import BitconvError
from bitconv.format.vocab import category_of
from bitconv.quantize.config import QuantConfig, parse_size
from support.interrupt import interrupted_at_call


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama", "tiny_bert"])
def test_convert_plans_block_projections_only(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    result = bitconv.convert(src, tmp_path / "out", QuantConfig.for_bits(1.58), progress=False)
    quantized = {r.name for r in result.plan.quantized}
    assert quantized and all(".0." in n or ".1." in n for n in quantized)
    assert not any(k in n for n in quantized for k in ("embed", "wte", "wpe", "lm_head", "classifier", "norm", "ln_"))
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "bitconv" and qc["format_version"] == 1 and qc["bits"] == 1.58
    assert qc["granularity"] == "tensor" and qc["scale_method"] == "absmean"


def test_conversion_is_byte_identical_across_runs(tiny_gpt2, tmp_path):
    for name in ("a", "b"):
        bitconv.convert(tiny_gpt2, tmp_path / name, QuantConfig.for_bits(1.58, keep_outliers="1%"), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_same_checkpoint_from_two_places_gives_the_same_bytes(tiny_gpt2, tmp_path):
    # the source's location must not leak into the output (transformers' config records its path)
    copy = tmp_path / "elsewhere" / tiny_gpt2.name
    shutil.copytree(tiny_gpt2, copy)
    bitconv.convert(tiny_gpt2, tmp_path / "a", QuantConfig.for_bits(1.58), progress=False)
    bitconv.convert(copy, tmp_path / "b", QuantConfig.for_bits(1.58), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_input_folder_is_never_modified(tiny_llama, tmp_path):
    before = _digest(tiny_llama)
    bitconv.convert(tiny_llama, tmp_path / "out", QuantConfig.for_bits(2), progress=False)
    assert _digest(tiny_llama) == before


def test_gpt2_conv1d_weights_are_stored_in_linear_layout(tiny_gpt2, tmp_path):
    bitconv.convert(tiny_gpt2, tmp_path / "out", QuantConfig.for_bits(8), progress=False)
    src = load_file(str(tiny_gpt2 / "model.safetensors"))
    name = "transformer.h.0.mlp.c_fc.weight"  # Conv1D: stored [in=64, out=256]
    assert src[name].shape == (64, 256)
    model = bitconv.load(tmp_path / "out")
    packed = model.get_submodule("transformer.h.0.mlp.c_fc")
    assert packed.spec.layout == "conv1d" and packed.spec.shape == (256, 64)
    assert torch.allclose(packed.weight_float(), src[name].t(), atol=src[name].abs().max().item() / 127)


@pytest.mark.parametrize("bits", ["16", "8", "4", "2", "1.58", "1"])
def test_every_scheme_converts_and_loads(tiny_llama, tmp_path, bits):
    bitconv.convert(tiny_llama, tmp_path / "out", QuantConfig.for_bits(bits), progress=False)
    model = bitconv.load(tmp_path / "out")
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_sharded_output_and_sharded_input(tiny_llama, tmp_path):
    bitconv.convert(tiny_llama, tmp_path / "sharded", QuantConfig.for_bits(16), max_shard_size="20KB", progress=False)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    # a sharded fp16 bitconv folder is also a valid sharded source: convert it again
    out = bitconv.convert(tmp_path / "sharded", tmp_path / "again", QuantConfig.for_bits(1.58), progress=False)
    assert out.plan.quantized


def test_options_keep_only_embeddings_outliers_packing(tiny_llama, tmp_path):
    r = bitconv.convert(tiny_llama, tmp_path / "o", QuantConfig.for_bits(1.58, keep=("mlp",), embeddings="int8", packing="base3", keep_outliers="0.5%", granularity="group:32"), progress=False)
    actions = {row.name: row.action for row in r.plan.rows}
    assert actions["model.layers.0.mlp.up_proj.weight"] == "fp16"
    assert actions["model.layers.0.self_attn.q_proj.weight"] == "ternary"
    assert actions["model.embed_tokens.weight"] == "int8"
    spec = next(row.spec for row in r.plan.rows if row.name == "model.layers.0.self_attn.q_proj.weight")
    assert spec.packing == "base3" and spec.granularity == "group" and spec.n_outliers == round(0.005 * 64 * 64)
    r = bitconv.convert(tiny_llama, tmp_path / "p", QuantConfig.for_bits(1.58, only=(r"layers\.1\..*q_proj",)), progress=False)
    assert [row.name for row in r.plan.quantized] == ["model.layers.1.self_attn.q_proj.weight"]


def test_dry_run_writes_nothing(tiny_gpt2, tmp_path):
    result = bitconv.convert(tiny_gpt2, tmp_path / "out", dry_run=True, progress=False)
    assert result.plan.quantized and not (tmp_path / "out").exists()


def test_out_exists_is_refused_unless_force(tiny_gpt2, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(BitconvError, match="already exists.*--force"):
        bitconv.convert(tiny_gpt2, tmp_path / "out", progress=False)
    bitconv.convert(tiny_gpt2, tmp_path / "out", force=True, progress=False)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_missing_path_and_offline_hub_id(tmp_path):
    with pytest.raises(BitconvError, match="does not exist"):
        bitconv.convert(tmp_path / "nope", tmp_path / "out", progress=False)
    with pytest.raises(BitconvError, match="HF_HUB_OFFLINE.*not in the cache"):
        bitconv.convert("someone/no-such-model", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_named(tiny_gpt2, tmp_path):
    src = _copy(tiny_gpt2, tmp_path / "src")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BitconvError, match="model.safetensors: truncated"):
        bitconv.convert(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_index_pointing_at_missing_shard(tiny_llama, tmp_path):
    bitconv.convert(tiny_llama, tmp_path / "sharded", QuantConfig.for_bits(16), max_shard_size="20KB", progress=False)
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(BitconvError, match=f"shard '{shard.name}', which is missing"):
        bitconv.convert(tmp_path / "sharded", tmp_path / "out", progress=False)


def test_no_quantizable_layers(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    save_file({"embeddings.word_embeddings.weight": torch.ones(4, 4)}, str(folder / "model.safetensors"))
    with pytest.raises(BitconvError, match="no quantizable layers"):
        bitconv.convert(folder, tmp_path / "out", progress=False)


def test_nan_weight_is_named_and_nothing_is_written(tiny_gpt2, tmp_path):
    src = _copy(tiny_gpt2, tmp_path / "src")
    tensors = load_file(str(src / "model.safetensors"))
    tensors["transformer.h.1.attn.c_proj.weight"][2, 3] = float("inf")
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(BitconvError, match="'transformer.h.1.attn.c_proj.weight' contains NaN or Inf"):
        bitconv.convert(src, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == [src]


def test_all_zero_tensor_and_odd_widths_convert(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    # hidden 30: not a multiple of 4, nor of the group size 16; intermediate 50
    config = LlamaConfig(num_hidden_layers=1, hidden_size=30, intermediate_size=50, num_attention_heads=3,
                         num_key_value_heads=3, vocab_size=64, head_dim=10)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.zero_()
    model.save_pretrained(str(tmp_path / "src"))
    for gran in ("tensor", "group:16"):
        bitconv.convert(tmp_path / "src", tmp_path / gran.replace(":", ""), QuantConfig.for_bits(granularity=gran), progress=False)
        loaded = bitconv.load(tmp_path / gran.replace(":", ""))
        assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight_float(), torch.zeros(50, 30))
        assert torch.isfinite(loaded(torch.arange(6).reshape(1, 6)).logits).all()


def test_interrupt_leaves_no_output(tiny_gpt2, tmp_path, monkeypatch):
    import bitconv.quantize.convert as conv

    with interrupted_at_call(monkeypatch, conv, "quantize", 3):
        bitconv.convert(tiny_gpt2, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_pickle_needs_explicit_option(tiny_gpt2, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_gpt2 / "config.json", src / "config.json")
    torch.save(load_file(str(tiny_gpt2 / "model.safetensors")), src / "pytorch_model.bin")
    with pytest.raises(BitconvError, match="--allow-pickle"):
        bitconv.convert(src, tmp_path / "out", progress=False)
    bitconv.convert(src, tmp_path / "out", allow_pickle=True, progress=False)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_helpers():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500kb") == 500_000
    assert category_of("model.embed_tokens.weight") == "embedding"
    assert category_of("model.layers.3.mlp.up_proj.weight") == "linear"
    assert category_of("model.layers.3.input_layernorm.weight", ndim=1) == "other"


def test_the_source_cards_license_is_recorded_in_the_folders_card(tiny_gpt2, tmp_path):
    from bitconv.report.model_card import front_matter

    source = tmp_path / "licensed"
    shutil.copytree(tiny_gpt2, source)
    (source / "README.md").write_text("---\nlicense: apache-2.0\n---\n# the source card\n")
    bitconv.convert(source, tmp_path / "out", progress=False)
    assert front_matter((tmp_path / "out" / "README.md").read_text()) == {"license": "apache-2.0"}
    bitconv.convert(tiny_gpt2, tmp_path / "plain", progress=False)  # no source card: no front matter
    assert front_matter((tmp_path / "plain" / "README.md").read_text()) == {}
