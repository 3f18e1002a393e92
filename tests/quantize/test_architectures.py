"""The architecture matrix (README, "Architectures"): a tiny model of each architecture converts, loads through
transformers' own `from_pretrained` (bitconv's quantizer) and computes what an independently dequantized float
checkpoint computes; each exporter exports it where it supports the architecture and refuses in one line where not.
"""

from __future__ import annotations

import pytest
import torch

import bitconv
from bitconv.errors import ExportError
from bitconv.export.gguf import export_gguf
from bitconv.export.hf_bitnet import export_hf_bitnet
from bitconv.export.onnx import export_onnx
from bitconv.format.reader import PackedReader
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.modeling import PackedEmbedding, PackedLinear, TiedPacked
from support.tiny_architectures import (
    ARCHITECTURES,
    architecture_class,
    dequantized_reference,
    example_inputs,
    main_output,
    make_architecture,
)

# where each exporter writes a model; everywhere else it must refuse with an ExportError (the README's table)
EXPORTS = {
    "onnx": {"gpt2", "llama", "bert"},
    "gguf": {"gpt2", "llama"},
    "hf_bitnet": set(ARCHITECTURES) - {"gpt2"},  # GPT-2's Conv1D is not an nn.Linear that BitNet layers replace
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Converted folders by (architecture, options name), made once per module when first asked for."""
    made = {}
    options = {"ternary": QuantConfig(), "a8": QuantConfig(activations="int8"),
               "int8-embeddings": QuantConfig(embeddings="int8", keep_outliers="1%")}

    def get(arch: str, kind: str = "ternary"):
        if (arch, kind) not in made:
            base = tmp_path_factory.mktemp(arch)
            source = made.get(arch) or make_architecture(arch, base / "source")
            made[arch] = source
            made[arch, kind] = bitconv.convert(source, base / kind, options[kind], progress=False).out
        return made[arch, kind]

    return get


def assert_matches_reference(folder, tmp_path, arch):
    cls = architecture_class(folder)
    model = cls.from_pretrained(folder, dtype=torch.float32)  # plain transformers; bitconv's quantizer places the codes
    reference = cls.from_pretrained(dequantized_reference(folder, tmp_path / "reference"), dtype=torch.float32)
    assert getattr(reference, "hf_quantizer", None) is None
    with torch.no_grad():
        got, want = main_output(model(**example_inputs(arch))), main_output(reference(**example_inputs(arch)))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item()), (got - want).abs().max()
    return model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_converts_and_loads_through_from_pretrained(folders, tmp_path, arch):
    folder = folders(arch)
    model = assert_matches_reference(folder, tmp_path, arch)
    n_packed = sum(isinstance(m, PackedLinear) for m in model.modules())
    assert n_packed == len(PackedReader(folder).specs) >= 4  # every quantized weight stays packed in memory
    assert model.bitconv_config["quant_method"] == "bitconv"


@pytest.mark.parametrize("arch", ["gpt2", "bert", "roberta", "gemma3", "opt", "t5", "whisper"])
def test_int8_embeddings_and_outliers_load(folders, tmp_path, arch):
    """Token tables stay packed (ties to them too: GPT-2's and T5's heads, RoBERTa's head with its own bias); position
    tables and nn.Embedding subclasses (Gemma3's scaled, OPT's offset positions) are decoded at load."""
    model = assert_matches_reference(folders(arch, "int8-embeddings"), tmp_path, arch)
    embeddings = model.get_input_embeddings()
    if arch == "gemma3":
        assert type(embeddings).__name__ == "Gemma3TextScaledWordEmbedding" and embeddings.weight.numel() == 64 * 32
    else:
        assert isinstance(embeddings, PackedEmbedding | TiedPacked)


def _export(target, folder, out):
    if target == "onnx":
        return export_onnx(folder, out / "model.onnx").path
    if target == "gguf":
        return export_gguf(folder, out / "model.gguf", progress=False).path
    return export_hf_bitnet(folder, out / "hf", progress=False).path


@pytest.mark.parametrize("target", sorted(EXPORTS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_exports_where_supported_and_refuses_in_one_line(folders, tmp_path, arch, target):
    folder = folders(arch)
    if arch not in EXPORTS[target]:
        with pytest.raises(ExportError) as refused:
            _export(target, folder, tmp_path)
        message = str(refused.value)
        assert "\n" not in message and ("support" in message or "no GGUF export" in message), message
        return
    assert _export(target, folder, tmp_path).exists()


@pytest.mark.parametrize("arch", sorted(EXPORTS["hf_bitnet"]))
def test_hf_bitnet_export_computes_what_bitconv_computes(folders, tmp_path, monkeypatch, arch):
    """With int8 activations (as transformers' BitNet layers compute) the exported folder, loaded by plain
    transformers, agrees with the packed model; modules it keeps in float (T5's wo) skip the activation rounding."""
    folder = folders(arch, "a8")
    result = export_hf_bitnet(folder, tmp_path / "hf", progress=False)
    # BitNet layers compile their kernels, which takes about a minute on 2 CPU cores (tests/export runs them compiled)
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    exported = architecture_class(result.path).from_pretrained(result.path)
    model = bitconv.load(folder, dtype=torch.float32)
    with torch.no_grad():
        got, want = main_output(exported(**example_inputs(arch))), main_output(model(**example_inputs(arch)))
    # int8 rounding of the activations may land one step apart where the two compute x * 127 / max|x| differently
    tolerance = 1e-2 if result.fallbacks else 1e-3
    assert (got - want).abs().max() <= tolerance * want.abs().max()
