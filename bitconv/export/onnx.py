"""ONNX export of a bitconv folder: the float graph from torch.onnx, then its quantized MatMul/Gemm nodes rewritten.

    export("gpt2-1.58", "gpt2-1.58.onnx")                          # bitconv.TernaryMatMul (needs the op library)
    export("gpt2-1.58", "stock.onnx", target="matmulnbits")        # com.microsoft.MatMulNBits bits=2 (plain ORT)
    export("gpt2-1.58", "float.onnx", target="float")              # the dequantized float graph

How quantized nodes are found (exact, not heuristic): every quantized weight of the folder is decoded to the same
float32 matrix `load(dequantize=True)` puts in the model; the exported graph carries it as the `B` initializer of a
MatMul (`W.T`, [in, out]) or of a Gemm (`W.T`, or `W` with transB=1). Initializers are matched by shape and
SHA-256 of their bytes and then compared element for element; every quantized weight must be found, or the export
fails. The matched float initializers are dropped, so the file holds only the packed bytes.

Decoders (GPT-2, Llama) are exported with a key/value cache: inputs input_ids, attention_mask, position_ids,
past_key_values.{i}.key/value [batch, kv_heads, past, head_dim]; outputs logits, present.{i}.key/value.
Encoders (BERT) take input_ids, attention_mask, token_type_ids and return logits (with a task head) or
last_hidden_state. Float initializers that float16 represents exactly (the fp16 embeddings, a tied or fp16
lm_head) are stored in float16, and an initializer that is the transpose of another (GPT-2's tied lm_head) is
stored once. Embeddings are gathered in float16 and the lm_head becomes bitconv.HalfMatMul (target "op"), so they
stay float16 at run time; other float16 matrices sit behind a Cast that ONNX Runtime folds at session creation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitconv.errors import ExportError, OutputError
from bitconv.export import ExportResult
from bitconv.format.atomic import check_output
from bitconv.format.layouts import matmulnbits_block_size, matmulnbits_weights
from bitconv.format.reader import PackedReader
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import SIDE_FILES, SUFFIX_CODES, SUFFIX_OUTLIER_IDX, SUFFIX_OUTLIER_VAL, SUFFIX_SCALE

TARGETS = ("op", "matmulnbits", "float")
DECODER_TYPES = ("gpt2", "llama")
ENCODER_TYPES = ("bert",)
DEFAULT_OPSET = 17
MAX_PROTO_BYTES = 2 * 1024**3  # protobuf's limit: larger models go to external data
FP16_MIN_ELEMENTS = 4096  # small tensors (norms, biases) are not worth a Cast node


@dataclass
class OnnxExportResult(ExportResult):
    kind: str = "decoder"  # "decoder" | "encoder"
    n_replaced: int = 0  # quantized MatMul/Gemm nodes rewritten (0 for target "float")


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ExportError(f"unknown export target {target!r}: use one of {', '.join(TARGETS)}")


def _model_kind(model) -> str:
    model_type = model.config.model_type
    if model_type in DECODER_TYPES and hasattr(model, "lm_head"):
        return "decoder"
    if model_type in ENCODER_TYPES:
        return "encoder"
    raise ExportError(
        f"the ONNX exporter does not support architecture {model_type!r} ({type(model).__name__}): supported are "
        f"{', '.join(DECODER_TYPES)} causal LMs and {', '.join(ENCODER_TYPES)} encoders; use another export path")


def _eager_attention(model) -> None:
    # the eager attention traces to plain ops with dynamic shapes; SDPA's mask helpers bake in trace-time lengths
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


class _DecoderWithCache(torch.nn.Module):
    """input_ids, attention_mask, position_ids, flat past keys/values -> logits, flat present keys/values."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def decoder_cache_shape(config) -> tuple[int, int, int]:
    """(n_layers, kv_heads, head_dim) of a decoder's cache tensors."""
    n_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return config.num_hidden_layers, kv_heads, head_dim


def _export_float(model, kind: str, path: Path, opset: int) -> tuple[list[str], list[str]]:
    """torch.onnx (TorchScript exporter) into `path`; returns the graph's input and output names."""
    if kind == "decoder":
        n_layers, kv_heads, head_dim = decoder_cache_shape(model.config)
        wrapper = _DecoderWithCache(model).eval()
        batch, seq, past = 2, 3, 4  # distinct sizes, so that no dynamic axis is traced as another
        args = (torch.zeros(batch, seq, dtype=torch.long), torch.ones(batch, past + seq, dtype=torch.long),
                torch.arange(past, past + seq).expand(batch, seq).contiguous(),
                *[torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * n_layers)])
        cache_names = [f"{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
        inputs = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{n}" for n in cache_names]
        outputs = ["logits"] + [f"present.{n}" for n in cache_names]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
        axes.update({n: {0: "batch", 2: "past_sequence"} for n in inputs[3:]})
        axes.update({n: {0: "batch", 2: "total_sequence"} for n in outputs[1:]})
    else:
        wrapper = _Encoder(model).eval()
        batch, seq = 2, 5
        args = (torch.zeros(batch, seq, dtype=torch.long), torch.ones(batch, seq, dtype=torch.long),
                torch.zeros(batch, seq, dtype=torch.long))
        inputs = ["input_ids", "attention_mask", "token_type_ids"]
        with torch.no_grad():
            probe = model(input_ids=args[0], attention_mask=args[1], token_type_ids=args[2])
        out_name = "logits" if getattr(probe, "logits", None) is not None else "last_hidden_state"
        rank = getattr(probe, out_name).dim()
        outputs = [out_name]
        axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
        axes[out_name] = {0: "batch", 1: "sequence"} if rank == 3 else {0: "batch"}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about every Python branch on a shape
        torch.onnx.export(wrapper, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return inputs, outputs


def _digest(array: np.ndarray) -> tuple:
    return (array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest())


@dataclass
class _Quantized:
    name: str
    spec: TensorSpec
    arrays: dict  # stored arrays by suffix
    weight: np.ndarray  # dequantized float32 [out, in], as load(dequantize=True) builds it


def _quantized_weights(folder: Path) -> list[_Quantized]:
    from bitconv.quantize.schemes import decode, dequantize

    reader = PackedReader(folder)
    result = []
    for name, spec in sorted(reader.specs.items()):
        arrays = reader.quantized_arrays(name)
        weight = dequantize(decode(spec, arrays)).to(torch.float32).numpy()
        result.append(_Quantized(name, spec, arrays, weight))
    return result


def _check_supported(quantized: list[_Quantized], target: str) -> None:
    if target == "float":
        return
    for q in quantized:
        if q.spec.scheme != "ternary":
            raise ExportError(
                f"{q.name}: scheme {q.spec.scheme!r}: export supports ternary folders for targets op and matmulnbits; "
                "use --target float for other schemes")
        if target == "matmulnbits" and q.spec.n_outliers:
            raise ExportError(
                f"{q.name}: {q.spec.n_outliers} fp16 outliers cannot be expressed by MatMulNBits; use --target op "
                "(the op adds them), --target float, or convert with --keep-outliers 0")


def _nbits_initializers(q: _Quantized) -> tuple[np.ndarray, np.ndarray, int]:
    block = matmulnbits_block_size(q.spec)
    if block is None:
        raise ExportError(f"{q.name}: group size {q.spec.group_size} has no power-of-two block >= 16 dividing it, "
                          "which MatMulNBits needs; use --target op or float")
    return matmulnbits_weights(q.spec, q.arrays[SUFFIX_CODES], q.arrays[SUFFIX_SCALE], block)


class _GraphRewriter:
    """Replaces the quantized MatMul/Gemm nodes of an exported float graph."""

    def __init__(self, model, quantized: list[_Quantized], target: str, act_quant: bool):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.target = target
        self.act_quant = act_quant
        self.inits = {t.name: t for t in self.graph.initializer}
        self.to_array = numpy_helper.to_array
        self.from_array = numpy_helper.from_array
        # (shape, sha256) of W.T (MatMul, Gemm transB=0) and of W (Gemm transB=1) -> quantized weight
        self.by_transposed = {}
        self.by_straight = {}
        for q in quantized:
            self.by_transposed.setdefault(_digest(np.ascontiguousarray(q.weight.T)), q)
            self.by_straight.setdefault(_digest(q.weight), q)
        self.found: set[str] = set()
        self.new_inits: dict[str, object] = {}

    def _match(self, node):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in self.inits:
            return None, False
        init = self.inits[node.input[1]]
        if init.data_type != 1 or len(init.dims) != 2:  # float32 matrices only
            return None, False
        attrs = {a.name: a for a in node.attribute}
        trans_b = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i == 1
        if node.op_type == "Gemm":
            if ("transA" in attrs and attrs["transA"].i) or ("alpha" in attrs and attrs["alpha"].f != 1.0) or \
                    ("beta" in attrs and attrs["beta"].f != 1.0):
                return None, False
        array = self.to_array(init)
        q = (self.by_straight if trans_b else self.by_transposed).get(_digest(array))
        if q is None:
            return None, False
        if not np.array_equal(array, q.weight if trans_b else q.weight.T):  # the hash matched; make sure
            return None, False
        return q, trans_b

    def _add_init(self, name: str, array: np.ndarray) -> str:
        if name not in self.new_inits:
            self.new_inits[name] = self.from_array(np.asarray(array), name)
        return name

    def _replacement(self, node, q: _Quantized) -> list:
        from onnx import helper

        n_out, n_in = q.spec.shape
        out = node.output[0]
        bias_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        bias_init = self.inits.get(bias_name) if bias_name else None
        inline_bias = (self.target == "op" and bias_init is not None and bias_init.data_type == 1
                       and list(bias_init.dims) == [n_out])
        product = out if (bias_name is None or inline_bias) else out + "/bitconv_product"
        nodes = []
        if self.target == "op":
            from bitconv.ort import OP_DOMAIN, OP_TYPE, PACKING_CODES

            inputs = [node.input[0], self._add_init(q.name + SUFFIX_CODES, q.arrays[SUFFIX_CODES]),
                      self._add_init(q.name + SUFFIX_SCALE, np.asarray(q.arrays[SUFFIX_SCALE], dtype=np.float32))]
            if q.spec.n_outliers:
                inputs += [self._add_init(q.name + SUFFIX_OUTLIER_IDX, q.arrays[SUFFIX_OUTLIER_IDX]),
                           self._add_init(q.name + SUFFIX_OUTLIER_VAL, q.arrays[SUFFIX_OUTLIER_VAL])]
            if inline_bias:
                inputs += ["", ""] * (not q.spec.n_outliers) + [bias_name]
            group = int(q.spec.group_size) if q.spec.granularity == "group" else 0
            nodes.append(helper.make_node(
                OP_TYPE, inputs, [product], name=node.name or q.name, domain=OP_DOMAIN, K=n_in, N=n_out,
                group_size=group, act_quant=int(self.act_quant), packing=PACKING_CODES[q.spec.packing]))
        else:
            b, scales, block = _nbits_initializers(q)
            inputs = [node.input[0], self._add_init(q.name + ".nbits_b", b),
                      self._add_init(q.name + ".nbits_scales", scales)]
            nodes.append(helper.make_node("MatMulNBits", inputs, [product], name=node.name or q.name,
                                          domain="com.microsoft", K=n_in, N=n_out, bits=2, block_size=block,
                                          accuracy_level=0))
        if bias_name is not None and not inline_bias:
            nodes.append(helper.make_node("Add", [product, bias_name], [out], name=(node.name or q.name) + "/bias"))
        return nodes

    def run(self) -> int:
        from onnx import helper

        new_nodes, n_replaced, replaced_weights = [], 0, set()
        for node in self.graph.node:
            q, _ = self._match(node)
            if q is None or self.target == "float":
                if q is not None:
                    self.found.add(q.name)
                new_nodes.append(node)
                continue
            self.found.add(q.name)
            replaced_weights.add(node.input[1])
            new_nodes.extend(self._replacement(node, q))
            n_replaced += 1
        del self.graph.node[:]
        self.graph.node.extend(new_nodes)
        still_used = {i for n in self.graph.node for i in n.input}
        keep = [t for t in self.graph.initializer if t.name not in replaced_weights or t.name in still_used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep + list(self.new_inits.values()))
        if self.target == "op":
            from bitconv.ort import OP_DOMAIN, OP_DOMAIN_VERSION

            self.model.opset_import.append(helper.make_opsetid(OP_DOMAIN, OP_DOMAIN_VERSION))
        elif self.target == "matmulnbits":
            self.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return n_replaced


def _compact_float_initializers(model) -> None:
    """Store a transposed duplicate once (Transpose node) and fp16-exact float32 tensors as fp16 (Cast node)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer
              if t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and np.prod(t.dims) >= FP16_MIN_ELEMENTS}
    digests = {}
    for name, array in arrays.items():
        digests.setdefault(_digest(array), name)
    new_nodes, dropped = [], set()
    order = {name: i for i, name in enumerate(arrays)}  # keep the earlier one: the module parameter, not a fold
    for name, array in arrays.items():
        original = digests.get(_digest(np.ascontiguousarray(array.T)))
        if original is None or order[original] >= order[name] or original in dropped:
            continue
        if np.array_equal(arrays[original].T, array):
            new_nodes.append(helper.make_node("Transpose", [original], [name], name=f"{name}/bitconv_transpose",
                                              perm=[1, 0]))
            dropped.add(name)
    kept = []
    for tensor in graph.initializer:
        if tensor.name in dropped:
            continue
        array = arrays.get(tensor.name)
        if array is not None:
            half = array.astype(np.float16)
            if np.array_equal(half.astype(np.float32), array):
                kept.append(numpy_helper.from_array(half, tensor.name + ".fp16"))
                new_nodes.append(helper.make_node("Cast", [tensor.name + ".fp16"], [tensor.name],
                                                  name=f"{tensor.name}/bitconv_cast", to=TensorProto.FLOAT))
                continue
        kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + existing)  # the new nodes read only initializers: putting them first keeps order


def _keep_float16_at_run_time(model, half_matmul: bool) -> int:
    """Let float16 initializers stay float16 in ONNX Runtime's memory; returns the number of HalfMatMul nodes.

    After `_compact_float_initializers` a float16 matrix W16 reaches its users as Cast(W16) -- directly, or through
    a Transpose (a tied lm_head). ONNX Runtime folds such constants at session creation, so the embeddings and the
    lm_head would sit in memory as float32 and the lm_head would be read at 4 bytes a weight on every token. Here:
    Gather(Cast(W16), ids) becomes Cast(Gather(W16, ids)) (plain ONNX, every target), and with `half_matmul`
    (target "op") MatMul(X, Transpose(Cast(W16))) and MatMul(X, Cast(W16)) become bitconv.HalfMatMul(X, W16 as
    [N, K]), which converts in registers. Casts and Transposes left without users are removed.
    """
    from onnx import TensorProto, helper, numpy_helper

    from bitconv.ort import HALF_OP_TYPE, OP_DOMAIN

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    half = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in inits
            and inits[n.input[0]].data_type == TensorProto.FLOAT16 and len(inits[n.input[0]].dims) == 2}
    # Transpose(Cast(W16)) outputs, i.e. W16 read as [K, N] where W16 itself is [N, K]
    half_t = {n.output[0]: half[n.input[0]] for n in graph.node if n.op_type == "Transpose" and n.input[0] in half
              and next((list(a.ints) for a in n.attribute if a.name == "perm"), [1, 0]) == [1, 0]}  # 2-D default
    new_inits, nodes, n_half = {}, [], 0
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in half:
            gathered = node.output[0] + ".fp16"
            nodes.append(helper.make_node("Gather", [half[node.input[0]], node.input[1]], [gathered], name=node.name,
                                          axis=next((a.i for a in node.attribute if a.name == "axis"), 0)))
            nodes.append(helper.make_node("Cast", [gathered], [node.output[0]], name=f"{node.name}/bitconv_cast",
                                          to=TensorProto.FLOAT))
            continue
        if half_matmul and node.op_type == "MatMul" and (node.input[1] in half_t or node.input[1] in half):
            if node.input[1] in half_t:
                weight = half_t[node.input[1]]
            else:  # Cast(W16) with W16 stored [K, N]: store its transpose instead
                source = half[node.input[1]]
                weight = source + ".nk"
                if weight not in new_inits:
                    array = np.ascontiguousarray(numpy_helper.to_array(inits[source]).T)
                    new_inits[weight] = numpy_helper.from_array(array, weight)
            nodes.append(helper.make_node(HALF_OP_TYPE, [node.input[0], weight], [node.output[0]],
                                          name=node.name or node.output[0], domain=OP_DOMAIN))
            n_half += 1
            continue
        nodes.append(node)
    # drop Casts / Transposes nobody reads any more, then initializers nobody reads
    while True:
        used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
        kept = [n for n in nodes if n.op_type not in ("Cast", "Transpose") or n.output[0] in used]
        if len(kept) == len(nodes):
            break
        nodes = kept
    used = {i for n in nodes for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used or t.data_type != TensorProto.FLOAT16] + \
        [t for name, t in new_inits.items() if name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return n_half


def _copy_side_files(folder: Path, out_dir: Path) -> None:
    """Tokenizer and config files next to the .onnx (never replacing a file that is already there)."""
    for name in ("config.json", *SIDE_FILES):
        src, dst = folder / name, out_dir / name
        if src.is_file() and not dst.exists():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def _save_atomically(proto, onnx_path: Path) -> None:
    """Write the model (and, over protobuf's 2 GB limit, its external data file NAME.onnx.data beside it).

    Both files are written into a temporary folder next to the target and renamed into place, the data file
    first, so an interrupted export leaves no half-written .onnx and never a .onnx pointing at missing data.
    """
    import onnx

    data_name = onnx_path.name + ".data"
    with tempfile.TemporaryDirectory(prefix=f".{onnx_path.name}.", dir=onnx_path.parent) as tmp:
        staged = Path(tmp) / onnx_path.name
        external = proto.ByteSize() > MAX_PROTO_BYTES
        if external:
            onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(Path(tmp) / data_name, onnx_path.with_name(data_name))
        else:
            onnx.save_model(proto, str(staged))
        os.replace(staged, onnx_path)
    if not external:  # a data file left by an earlier, larger export to the same name
        onnx_path.with_name(data_name).unlink(missing_ok=True)


def export_onnx(folder: str | os.PathLike, onnx_path: str | os.PathLike, *, force: bool = False, target: str = "op",
                opset: int = DEFAULT_OPSET, copy_side_files: bool = True) -> OnnxExportResult:
    """Export a bitconv folder to ONNX; see the module docstring for targets, inputs and outputs."""
    import onnx

    from bitconv.format.reader import read_quantization_config
    from bitconv.quantize.modeling import load

    _check_target(target)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a folder; pass a bitconv output folder (bitconv convert ... --out DIR)")
    qc = read_quantization_config(folder)
    onnx_path = Path(onnx_path).expanduser()
    if onnx_path.suffix != ".onnx":
        raise OutputError(f"{onnx_path}: the output name must end in .onnx")
    check_output(onnx_path, force=force, inputs=[folder], option="--onnx")
    quantized = _quantized_weights(folder)
    _check_supported(quantized, target)
    act_quant = qc.get("activations") == "int8"

    model = load(folder, dequantize=True, dtype=torch.float32)  # the float graph; fp16 is restored at run time
    kind = _model_kind(model)
    model_type = model.config.model_type
    _eager_attention(model)
    if act_quant and target == "op":
        # the op quantizes its own input (act_quant=1): drop load()'s int8 pre-hooks so it is not done twice
        for module in model.modules():
            module._forward_pre_hooks.clear()

    with tempfile.TemporaryDirectory(prefix="bitconv-onnx-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        inputs, outputs = _export_float(model, kind, float_path, opset)
        proto = onnx.load(str(float_path))
    del model

    rewriter = _GraphRewriter(proto, quantized, target, act_quant)
    n_replaced = rewriter.run()
    missing = [q.name for q in quantized if q.name not in rewriter.found]
    if missing:
        raise ExportError(f"{folder}: quantized weights {missing[:3]} were not found as MatMul/Gemm weights in the "
                           "exported graph; this architecture's export is not supported")
    _compact_float_initializers(proto)
    _keep_float16_at_run_time(proto, half_matmul=target == "op")
    proto.ir_version = min(proto.ir_version, 9)
    meta = {"bitconv.target": target, "bitconv.kind": kind, "bitconv.model_type": model_type,
            "bitconv.quantization_config": json.dumps(qc, sort_keys=True),
            "bitconv.act_quant": str(int(act_quant)), "bitconv.inputs": json.dumps(inputs),
            "bitconv.outputs": json.dumps(outputs)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(proto, onnx_path)
    if copy_side_files:
        _copy_side_files(folder, onnx_path.parent)
    return OnnxExportResult(onnx_path, target, kind=kind, n_replaced=n_replaced)
