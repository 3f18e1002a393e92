"""Hostile folders (issue 12): FIFOs where model files belong, shard indexes that point outside the folder, and
config.json files that lie (versions, widths, sizes, classes). Every command refuses with one line and exit code 1,
fast, before building anything, and changes nothing."""

from __future__ import annotations

import json
import os
import time

import pytest

from bitconv.errors import BitconvError, FormatError
from bitconv.format.reader import PackedReader
from bitconv.quantize.modeling import load
from support.isolation import bitconv_process, one_line_error, snapshot
from support.packed_files import write_bitconv_folder
from support.paths import FIXTURE_TEXT


@pytest.fixture
def folder(tmp_path):
    return write_bitconv_folder(tmp_path / "model")


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key in config.get("quantization_config", {}) and key not in config:
            config["quantization_config"][key] = value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def refused(run_cli, *args) -> str:
    code, _, err = run_cli(*map(str, args))
    assert code == 1, err
    return one_line_error(err)


# ---- FIFOs: a reader that opened one would wait for a writer forever (the child's timeout would fire)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model.safetensors.index.json"])
def test_a_fifo_in_a_bitconv_folder_is_refused_without_hanging(folder, name):
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    before = snapshot(folder)
    for args in (("inspect", folder), ("eval", folder, "--data", FIXTURE_TEXT, "--max-tokens", "32")):  # eval: load()
        code, _, err = bitconv_process(*args, timeout=90)
        assert code == 1 and "not a regular file" in one_line_error(err), err
    assert snapshot(folder) == before


def test_a_fifo_in_a_source_folder_is_refused_by_convert(tiny_llama, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for path in tiny_llama.iterdir():
        (source / path.name).symlink_to(path)
    os.mkfifo(source / "tokenizer.json")
    code, _, err = bitconv_process("convert", source, "--out", tmp_path / "out", timeout=120)
    assert code == 1 and "not a regular file" in one_line_error(err), err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ---- the shard index


@pytest.mark.parametrize("shard", ["/abs/model.safetensors", "../outside.safetensors", "sub/model.safetensors",
                                   "..", "model.safetensors\\..\\x"])
def test_index_shards_outside_the_folder_are_never_opened(folder, tmp_path, shard):
    # the file the index points at exists and is valid: only the name may refuse it
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    names = PackedReader(folder).stored_names()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    with pytest.raises(FormatError, match="not a plain file name in the model folder"):
        PackedReader(folder)


def test_index_that_disagrees_with_the_shards_is_refused(folder):
    names = PackedReader(folder).stored_names()
    weight_map = {n: "model.safetensors" for n in names}
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {**weight_map, "ghost.weight": "model.safetensors"}}))
    with pytest.raises(FormatError, match="'ghost.weight' is mapped to model.safetensors, which does not hold it"):
        PackedReader(folder)
    index.write_text(json.dumps({"weight_map": {n: "model.safetensors" for n in names[1:]}}))
    with pytest.raises(FormatError, match="is not mapped to this shard"):
        PackedReader(folder)
    index.write_text('{"weight_map": {}, "weight_map": {}}')
    with pytest.raises(FormatError, match="duplicate key 'weight_map'"):
        PackedReader(folder)


# ---- config.json


@pytest.mark.parametrize("change, message", [
    ({"format_version": 2}, "format version 2, this bitconv reads version 1"),
    ({"format_version": "1"}, "format version '1'"),
    ({"bits": 3}, "quantization_config.bits is 3"),
    ({"format": "bitconv-packed2"}, "quantization_config.format is 'bitconv-packed2'"),
])
def test_quantization_config_that_this_bitconv_cannot_read_is_refused_everywhere(run_cli, folder, tmp_path, change,
                                                                                 message):
    edit_config(folder, **change)
    before = snapshot(folder)
    assert message in refused(run_cli, "inspect", folder)
    assert message in refused(run_cli, "export", folder, "--gguf", tmp_path / "x.gguf")
    assert message in refused(run_cli, "eval", folder, "--data", FIXTURE_TEXT, "--max-tokens", "64")
    with pytest.raises(FormatError, match=message.replace("(", r"\(")):
        load(folder)
    assert snapshot(folder) == before and not (tmp_path / "x.gguf").exists()


def test_vocab_size_of_2_31_is_refused_before_anything_is_built(run_cli, folder, tmp_path):
    """The GGUF export used to pad the vocabulary to vocab_size (15 GB of RSS) and `load` to build the model first."""
    edit_config(folder, vocab_size=2**31)
    start = time.perf_counter()
    message = refused(run_cli, "export", folder, "--gguf", tmp_path / "x.gguf")
    assert "vocab_size is 2147483648, but the token embedding's row count is 96" in message
    with pytest.raises(FormatError, match="vocab_size is 2147483648"):
        load(folder)
    assert time.perf_counter() - start < 10 and not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("change, message", [
    ({"intermediate_size": 2**31}, "intermediate_size is 2147483648, but no stored tensor has a dimension"),
    ({"hidden_size": 4096}, "hidden_size is 4096, but the token embedding's width is 64"),
    ({"num_hidden_layers": 1000}, "num_hidden_layers is 1000, but the number of stored blocks is 2"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0, not a positive integer"),
    ({"num_attention_heads": 1e9}, "not a positive integer"),
    ({"num_key_value_heads": 2}, "config.json makes LlamaForCausalLM's 'model.layers.0.self_attn.k_proj.weight' [32, 64]"),
    ({"architectures": ["pipeline"]}, "architectures names 'pipeline', which is not a transformers model class"),
    ({"architectures": ["AutoModelForCausalLM"]}, "'AutoModelForCausalLM', which is not a transformers model class"),
    ({"architectures": "LlamaForCausalLM"}, "not a list of model class names"),
    ({"model_type": "no-such-model"}, "transformers cannot read it"),
    ({"keep": 5}, "quantization_config holds a value bitconv cannot use"),
])
def test_config_json_that_does_not_match_the_weights_is_refused_by_load(run_cli, folder, change, message):
    edit_config(folder, **change)
    with pytest.raises(BitconvError) as info:
        load(folder)
    assert message in str(info.value) and "\n" not in str(info.value)
    code, _, err = run_cli("eval", folder, "--data", FIXTURE_TEXT, "--max-tokens", "64", "--latency-repeats", "0")
    assert code == 1 and message in one_line_error(err)


@pytest.mark.parametrize("name, text", [
    ("tokenizer.json", '{"model": 5}'),
    ("tokenizer.json", "{not json"),
    ("generation_config.json", "{not json"),
    ("config.json", None),  # rope_scaling 5
    ("config.json", "rms"),  # rms_norm_eps "x"
])
def test_side_files_and_config_values_that_break_parsers_are_one_line(run_cli, folder, tmp_path, name, text):
    if name == "config.json":
        edit_config(folder, **({"rope_scaling": 5} if text is None else {"rms_norm_eps": "x"}))
    else:
        (folder / name).write_text(text)
    before = snapshot(folder)
    for args in (("export", folder, "--gguf", tmp_path / "x.gguf"),
                 ("eval", folder, "--data", FIXTURE_TEXT, "--max-tokens", "32", "--latency-repeats", "0")):
        code, _, err = run_cli(*map(str, args))
        assert code == 1, (args, err)
        one_line_error(err)
    assert snapshot(folder) == before and not (tmp_path / "x.gguf").exists()
