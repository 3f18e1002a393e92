"""`bitconv export FOLDER --gguf OUT.gguf --type tq2_0|tq1_0`: a GGUF file for llama.cpp.

Ternary (and binary) weights are re-packed, not re-quantized, into llama.cpp's ternary block types, whose
layouts come from gguf-py (gguf/quants.py):

- TQ2_0: blocks of 256 weights along a row, 66 bytes: 64 bytes of 2-bit codes `t + 1`, where element
  `128 * h + 32 * k + l` of the block sits in byte `32 * h + l` at bits `2 * k`; then the scale as fp16.
- TQ1_0: blocks of 256, 54 bytes: 48 bytes of five trits each (elements 0-159 in bytes 0-31: byte `l`
  holds elements `32 * i + l`, i = 0..4; elements 160-239 in bytes 32-47: byte `32 + l` holds
  `160 + 16 * i + l`), then 4 bytes of four trits each (elements 240-255: byte `l` holds `240 + 4 * i + l`),
  the first trit most significant (`sum (t_i + 1) * 3^(4 - i)`; the 4-trit bytes use the same weights
  81, 27, 9, 3, as if a fifth trit 0 followed), stored as the fixed-point byte `ceil(value * 256 / 243)`;
  then the scale as fp16.

Our scale (per tensor or per output channel, or per group when the group size is a multiple of 256) becomes
the fp16 scale of every block it covers, so the only change to the weights is the fp16 rounding of the
scale (relative error <= 2^-11). A tensor llama.cpp cannot hold as TQ (input width not a multiple of 256,
groups that cut a block, kept outliers) is written dequantized as Q8_0 (F16 when the width is not a multiple
of 32) and listed in the result as a fallback, never silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitconv.errors import ExportError, FormatError
from bitconv.export import ExportResult
from bitconv.format.atomic import check_output, staged_file
from bitconv.format.layouts import QK_K, TQ_ENCODERS
from bitconv.format.reader import PackedReader, open_bitconv_folder
from bitconv.format.safetensors import read_json_file
from bitconv.format.spec import TensorSpec

SUPPORTED = ("llama", "gpt2")
TERNARY_LIKE = ("ternary", "binary")


@dataclass
class ExportedTensor:
    name: str  # GGUF name
    source: str  # name in the bitconv folder
    shape: tuple[int, ...]  # [out, in] (numpy order)
    ggml_type: str
    n_bytes: int
    fallback_reason: str = ""


@dataclass
class GGUFExportResult(ExportResult):
    ggml_type: str = "TQ2_0"
    architecture: str = ""
    tensors: list[ExportedTensor] = field(default_factory=list)


def block_scales_for(spec: TensorSpec, scale: np.ndarray) -> np.ndarray | None:
    """Our scales as one value per 256-block [out, in // 256], or None when they vary inside a block."""
    out, n_in = spec.shape
    n_blocks = n_in // QK_K
    if spec.granularity == "tensor":
        return np.full((out, n_blocks), scale.reshape(-1)[0], dtype=np.float32)
    if spec.granularity == "channel":
        return np.repeat(scale.reshape(out, 1), n_blocks, axis=1)
    if spec.group_size % QK_K:
        return None
    return np.repeat(scale.reshape(out, -1), spec.group_size // QK_K, axis=1)[:, :n_blocks]


# ---------------------------------------------------------------------------------------------------------
# architecture details


def _llama_rope_permutation(n_rows: int, n_heads: int) -> np.ndarray:
    """Row order llama.cpp's LLAMA graph expects for q/k: HF's rotate-half halves become interleaved pairs."""
    if n_rows % (2 * n_heads):
        raise ExportError(f"{n_rows} rows do not split into {n_heads} RoPE heads of an even size; config.json's "
                          "head counts do not match the weights: re-convert the model")
    head_dim = n_rows // n_heads
    return np.arange(n_rows).reshape(n_heads, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


def _row_permutation(arch: str, name: str, n_rows: int, config: dict) -> np.ndarray | None:
    if arch != "llama":
        return None
    if name.endswith("self_attn.q_proj.weight"):
        return _llama_rope_permutation(n_rows, config["num_attention_heads"])
    if name.endswith("self_attn.k_proj.weight"):
        return _llama_rope_permutation(n_rows, config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def _rope_theta(config: dict) -> float:
    """RoPE base: transformers 5 keeps it in rope_parameters, 4.x in rope_theta (+ rope_scaling)."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ExportError(f"the model uses RoPE scaling '{rope_type}', which this GGUF export does not write; "
                           "only plain RoPE models can be exported")
    return float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)


HPARAMS = {"llama": (("num_attention_heads",), ("hidden_size",), ("num_hidden_layers",), ("intermediate_size",),
                    ("vocab_size",)),
           "gpt2": (("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"),
                    ("vocab_size",))}


def _check_hparams(folder: Path, arch: str, config: dict) -> None:
    """The sizes the GGUF header needs are in config.json (open_bitconv_folder checked their values against the
    tensors), so a missing one is a one-line error before anything is written."""
    for keys in HPARAMS[arch]:
        if not any(config.get(k) for k in keys):
            raise ExportError(f"{folder / 'config.json'}: no {keys[0]}, which the GGUF header needs; re-convert the model")


def _write_hparams(writer, arch: str, config: dict) -> None:
    if arch == "llama":
        n_heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
        writer.add_context_length(config.get("max_position_embeddings", 2048))
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(n_heads)
        writer.add_head_count_kv(config.get("num_key_value_heads") or n_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(config["vocab_size"])
    else:  # gpt2
        n_embd = config.get("n_embd") or config["hidden_size"]
        writer.add_context_length(config.get("n_positions") or config.get("n_ctx", 1024))
        writer.add_embedding_length(n_embd)
        writer.add_block_count(config.get("n_layer") or config["num_hidden_layers"])
        writer.add_feed_forward_length(config.get("n_inner") or 4 * n_embd)
        writer.add_head_count(config.get("n_head") or config["num_attention_heads"])
        writer.add_layer_norm_eps(float(config.get("layer_norm_epsilon", 1e-5)))
        writer.add_vocab_size(config["vocab_size"])


def _pre_tokenizer_name(tokenizer_json, arch: str) -> str:
    """llama.cpp's name for the pre-tokenizer (the regex split before BPE), read from tokenizer.json's shape."""
    pre = (tokenizer_json.get("pre_tokenizer") if isinstance(tokenizer_json, dict) else None) or {}
    pre = pre if isinstance(pre, dict) else {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") if isinstance(s, dict) else None for s in (steps if isinstance(steps, list) else [])]
    if types == ["ByteLevel"]:
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # SmolLM / SmolLM2: single digits split off, then GPT-2's byte-level split
    raise ExportError(
        f"the tokenizer's pre-tokenizer ({'+'.join(map(str, types))}) is not one this GGUF export knows "
        "(GPT-2 byte-level, or digits + byte-level as in SmolLM2); llama.cpp would tokenize text differently"
    )


def _write_tokenizer(writer, folder: Path, n_vocab: int, arch: str) -> None:
    import gguf
    from gguf.vocab import BpeVocab, SpecialVocab

    from bitconv.quantize.source import check_side_files

    tokenizer_path = folder / "tokenizer.json"
    if not os.path.lexists(tokenizer_path):
        raise ExportError(f"{folder}: no tokenizer.json; llama.cpp needs the vocabulary: convert from a source "
                           "that has its tokenizer (a folder, a Hub id, or a GGUF file)")
    check_side_files(folder)
    pre = _pre_tokenizer_name(read_json_file(tokenizer_path, fix="re-convert the model"), arch)
    try:  # gguf-py reads the tokenizer files as trusted: anything odd in them raises some exception
        vocab = BpeVocab(folder)
        tokens, types = [], []
        for text, _score, toktype in vocab.all_tokens():
            tokens.append(text if isinstance(text, str) else text.decode("utf-8"))
            types.append(toktype)
        special = SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{tokenizer_path}: not a GPT-2 style byte-level BPE tokenizer ({reason}); "
                           "this GGUF export writes only those") from None
    if len(tokens) > n_vocab:
        raise ExportError(f"{tokenizer_path}: {len(tokens)} tokens but the model has {n_vocab} embeddings")
    for i in range(len(tokens), n_vocab):  # padded vocabularies: rows without a token
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)


# ---------------------------------------------------------------------------------------------------------
# tensors


def _fallback(weight: np.ndarray) -> tuple[np.ndarray, str]:
    """Dequantized weights in a type llama.cpp accepts for any width: Q8_0 (rows of 32k), else F16."""
    import gguf

    if weight.shape[1] % 32 == 0:
        return gguf.quants.quantize(weight.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), "Q8_0"
    return weight.astype(np.float16), "F16"


def _quantized_tensor(reader: PackedReader, name: str, tq: str, perm: np.ndarray | None):
    """(data, ggml type name, fallback reason) of one packed weight."""
    from bitconv.quantize.schemes import decode, dequantize

    spec = reader.specs[name]
    q = decode(spec, reader.quantized_arrays(name))
    out, n_in = spec.shape
    reason = ""
    if spec.scheme not in TERNARY_LIKE:
        reason = f"scheme {spec.scheme} is not ternary"
    elif n_in % QK_K:
        reason = f"input width {n_in} is not a multiple of {QK_K}"
    elif spec.n_outliers:
        reason = f"{spec.n_outliers} fp16 outliers have no place in {tq.upper()}"
    scales = None
    if not reason:
        scales = block_scales_for(spec, q.scale.numpy())
        if scales is None:
            reason = f"group size {spec.group_size} cuts the {QK_K}-weight blocks"
    if reason:
        weight = dequantize(q).numpy()
        if perm is not None:
            weight = weight[perm]
        data, ggml_type = _fallback(weight)
        return data, ggml_type, reason
    trits = q.codes.numpy()
    if perm is not None:
        trits, scales = trits[perm], scales[perm]
    return TQ_ENCODERS[tq](trits, scales), tq.upper(), ""


def _plain_tensor(array: np.ndarray, gguf_name: str) -> tuple[np.ndarray, str]:
    # llama.cpp keeps norms and biases in F32 (as its own converter writes them); matrices stay F16
    if array.ndim == 1:
        return array.astype(np.float32), "F32"
    return array.astype(np.float16), "F16"


def export_gguf(folder: Path | str, out: Path | str, *, ggml_type: str = "tq2_0", force: bool = False,
                progress: bool = True) -> GGUFExportResult:
    """Write `out` (.gguf) from a bitconv folder of a Llama or GPT-2 model."""
    import gguf

    from bitconv.display import task_progress
    from bitconv.quantize.source import load_config

    folder, out = Path(folder), Path(out)
    ggml_type = ggml_type.lower()
    if ggml_type not in TQ_ENCODERS:
        raise ExportError(f"unknown --type {ggml_type!r}: use tq2_0 (2.06 bits/weight) or tq1_0 (1.69 bits/weight)")
    config, reader = open_bitconv_folder(folder)
    load_config(folder, error=FormatError)  # the values transformers checks (RoPE, epsilons), as every other path
    arch = config.get("model_type")
    if arch not in SUPPORTED:
        raise ExportError(f"{folder}: model type {arch!r} has no GGUF export; supported: {', '.join(SUPPORTED)}")
    _check_hparams(folder, arch, config)
    check_output(out, force=force, inputs=[folder], option="--gguf", kind="file")
    if not any(s.scheme in TERNARY_LIKE for s in reader.specs.values()):
        raise ExportError(f"{folder}: no ternary or binary weights; the GGUF export writes TQ types: "
                           "convert with --bits 1.58")

    gguf_arch = {"llama": gguf.MODEL_ARCH.LLAMA, "gpt2": gguf.MODEL_ARCH.GPT2}[arch]
    n_layers = config.get("num_hidden_layers") or config.get("n_layer")
    name_map = gguf.get_tensor_name_map(gguf_arch, n_layers)
    names = sorted([*reader.specs, *reader.plain_names()])
    mapped = {}
    for name in names:
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # GPT-2's causal-mask buffers, not weights
            raise ExportError(f"{folder}: tensor '{name}' has no llama.cpp name for {arch}; the folder does not "
                               f"look like a standard {arch} checkpoint")
        mapped[name] = gguf_name

    result = GGUFExportResult(out, f"gguf:{ggml_type}", ggml_type=ggml_type.upper(), architecture=arch)
    with staged_file(out, option="--gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf_arch])
        try:
            writer.add_name(folder.name)
            writer.add_file_type({"tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0,
                                  "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0}[ggml_type])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            _write_hparams(writer, arch, config)
            _write_tokenizer(writer, folder, config["vocab_size"], arch)
            with task_progress(f"writing {out.name}", total=len(mapped), enabled=progress) as advance:
                for name, gguf_name in mapped.items():
                    if name in reader.specs:
                        perm = _row_permutation(arch, name, reader.specs[name].shape[0], config)
                        data, type_name, reason = _quantized_tensor(reader, name, ggml_type, perm)
                        shape = reader.specs[name].shape
                    else:
                        data, type_name = _plain_tensor(reader.raw(name), gguf_name)
                        reason, shape = "", tuple(data.shape)
                    qtype = gguf.GGMLQuantizationType[type_name]
                    writer.add_tensor(gguf_name, data, raw_dtype=qtype)
                    result.tensors.append(ExportedTensor(gguf_name, name, tuple(shape), type_name, int(data.nbytes),
                                                         reason))
                    advance(name)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        except BaseException:
            try:
                writer.close()
            except Exception:  # the first error is the one to report; the staged file is removed anyway
                pass
            raise
        writer.close()
    result.fallbacks = {t.name: t.fallback_reason for t in result.tensors if t.fallback_reason}
    return result
