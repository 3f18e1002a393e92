"""The lean decode graph of a GPT-2 or Llama bitconv folder, built node by node from the folder's stored tensors.

Why not trace: torch.onnx turns transformers' key/value-cache bookkeeping into about 1,000 small nodes a token
(Shape, Gather, Concat, Unsqueeze, Slice, Transpose, ...) that cost as much as the matrix products of a small
model. Here every block is a handful of ONNX Runtime's fused contrib ops (com.microsoft, CPU):

    GPT-2  SkipLayerNormalization, qkv projection (GPT-2's packed c_attn), GroupQueryAttention, out projection,
           SkipLayerNormalization, fc, FastGelu, proj                                         8 nodes a block
    Llama  SkipSimplifiedLayerNormalization, qkv (q, k, v stacked into one matrix), GroupQueryAttention (rotary
           inside), o projection, SkipSimplifiedLayerNormalization, gate|up (stacked), Split, QuickGelu
           (alpha 1: SiLU), Mul, down                                                         10 nodes a block

plus the embedding lookup (2-5 nodes), 5 nodes that turn attention_mask into GroupQueryAttention's sequence
lengths, the final norm and the lm_head. Each skip-norm also returns the residual sum, so residual adds cost no
node of their own. Stacking q/k/v (and gate/up) rows is exact: every output row keeps its own codes and scale,
and the per-token int8 activation scale is the same for all of them since they read the same input.

Inputs: input_ids [batch, sequence]; attention_mask [batch, total_sequence] (ones for the tokens; rows may be
right-padded, left padding is not supported: GroupQueryAttention takes each row's length from the mask's row
sum); position_ids [batch, sequence] for GPT-2's learned positions (Llama's rotary positions come from the
lengths, so its graph has no position_ids input); past_key_values.{i}.key/value [batch, kv_heads, past,
head_dim]. Outputs: logits [batch, sequence, vocab], present.{i}.key/value. The past is either exactly the
tokens so far (present is then past plus the new tokens, as in a traced graph) or a larger buffer shared with
present through ONNX Runtime's IO binding, which GroupQueryAttention then writes in place (bitconv.ort.generate).

Projections by how the folder stores them and by target:
    ternary        op: bitconv.TernaryMatMul   matmulnbits: MatMulNBits bits=2   float: MatMul
    int8           op: bitconv.Int8MatMul      matmulnbits: MatMulNBits bits=8   float: MatMul
    plain float16  op: bitconv.HalfMatMul      other targets: MatMul of the float16 table cast to float32
                   (ONNX Runtime folds the cast at session creation)
Float16 and int8 embedding tables are gathered as stored and only the gathered rows are converted; a tied
lm_head reads the embedding table itself (stored once). With int8 activations (the folder's `activations`),
the op quantizes its own input; the stock targets get the same per-token rounding as explicit nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bitconv.errors import ExportError
from bitconv.format.layouts import matmulnbits_block_size, matmulnbits_weights
from bitconv.format.reader import PackedReader
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import SUFFIX_CODES, SUFFIX_OUTLIER_IDX, SUFFIX_OUTLIER_VAL, SUFFIX_SCALE

MS_DOMAIN = "com.microsoft"
NBITS_INT8_ZERO = 128  # MatMulNBits' default zero point for bits=8: stored byte = int8 code + 128
_GPT2_ACTIVATIONS = {"gelu_new": ("FastGelu", MS_DOMAIN), "gelu_pytorch_tanh": ("FastGelu", MS_DOMAIN),
                     "gelu": ("Gelu", MS_DOMAIN), "relu": ("Relu", ""), "silu": ("QuickGelu", MS_DOMAIN),
                     "swish": ("QuickGelu", MS_DOMAIN)}


@dataclass
class Matrix:
    """One weight [out, in] as the folder stores it: quantized (spec + stored arrays) or a plain float matrix."""

    name: str  # the folder's tensor name (initializers are named after it)
    spec: TensorSpec | None = None
    arrays: dict | None = None
    plain: np.ndarray | None = None  # [out, in] as stored (float16), Conv1D weights transposed
    sources: tuple[str, ...] = ()  # the stored weights stacked into this one (empty: itself)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.spec.shape) if self.spec is not None else tuple(self.plain.shape)

    @property
    def scheme(self) -> str:
        return self.spec.scheme if self.spec is not None else "plain"

    def dequantized(self) -> np.ndarray:
        import torch

        from bitconv.quantize.schemes import decode, dequantize

        if self.spec is None:
            return np.asarray(self.plain, dtype=np.float32)
        return dequantize(decode(self.spec, self.arrays)).to(torch.float32).numpy()


def stack_rows(matrices: list[Matrix], name: str) -> Matrix | None:
    """The matrices' rows one after the other as one Matrix (same input width and storage), or None."""
    first = matrices[0]
    if any(m.shape[1] != first.shape[1] or m.scheme != first.scheme for m in matrices):
        return None
    n_out = sum(m.shape[0] for m in matrices)
    if first.spec is None:
        return Matrix(name, plain=np.concatenate([m.plain for m in matrices]))
    sources = tuple(m.name for m in matrices)
    specs = [m.spec for m in matrices]
    keys = {(s.packing, s.granularity == "group", s.group_size, s.layout) for s in specs}
    if len(keys) != 1:
        return None
    n_in = first.shape[1]
    grouped = first.spec.granularity == "group"
    # per-tensor scales become per-row ones, so that each stacked row keeps the scale of the matrix it came from
    scales = [np.asarray(m.arrays[SUFFIX_SCALE], dtype=np.float32) for m in matrices]
    if not grouped:
        scales = [np.broadcast_to(s.reshape(-1), (m.shape[0],)) for s, m in zip(scales, matrices)]
    arrays = {SUFFIX_CODES: np.concatenate([m.arrays[SUFFIX_CODES] for m in matrices]),
              SUFFIX_SCALE: np.ascontiguousarray(np.concatenate(scales), dtype=np.float32)}
    n_outliers = sum(s.n_outliers for s in specs)
    if n_outliers:
        offsets = np.cumsum([0] + [m.shape[0] for m in matrices])[:-1] * n_in
        arrays[SUFFIX_OUTLIER_IDX] = np.concatenate(
            [m.arrays[SUFFIX_OUTLIER_IDX] + off for m, off in zip(matrices, offsets) if m.spec.n_outliers])
        arrays[SUFFIX_OUTLIER_VAL] = np.concatenate(
            [m.arrays[SUFFIX_OUTLIER_VAL] for m in matrices if m.spec.n_outliers])
    spec = replace(first.spec, shape=(n_out, n_in), granularity="group" if grouped else "channel",
                   n_outliers=n_outliers)
    return Matrix(name, spec=spec, arrays=arrays, sources=sources)


def matmulnbits_initializers(m: Matrix) -> tuple[np.ndarray, np.ndarray, int, int]:
    """MatMulNBits' B, scales, block_size and bits for a ternary (bits=2) or int8 (bits=8) weight."""
    block = matmulnbits_block_size(m.spec)
    if block is None:
        raise ExportError(f"{m.name}: group size {m.spec.group_size} has no power-of-two block >= 16 dividing it, "
                          "which MatMulNBits needs; use --target op or float")
    if m.scheme == "ternary":
        return (*matmulnbits_weights(m.spec, m.arrays[SUFFIX_CODES], m.arrays[SUFFIX_SCALE], block), 2)
    n_out, n_in = m.shape  # int8: one byte a weight, zero point 128, rows padded with zero codes
    k_blocks = -(-n_in // block)
    b = np.full((n_out, k_blocks * block), NBITS_INT8_ZERO, dtype=np.uint8)
    b[:, :n_in] = (m.arrays[SUFFIX_CODES].astype(np.int16) + NBITS_INT8_ZERO).astype(np.uint8)
    scale = np.asarray(m.arrays[SUFFIX_SCALE], dtype=np.float32).reshape(n_out, -1)
    per_block = np.arange(k_blocks) * block // int(m.spec.group_size) if m.spec.granularity == "group" else 0
    scales = np.broadcast_to(scale[:, per_block].reshape(n_out, -1), (n_out, k_blocks))
    return b.reshape(n_out, k_blocks, block), np.ascontiguousarray(scales), block, 8


class FolderTensors:
    """The folder's tensors by model parameter name (a checkpoint may lack or carry the base model prefix)."""

    def __init__(self, folder, config):
        from bitconv.quantize.source import module_kinds, resolve_name

        self.reader = PackedReader(folder)
        self.kinds, prefix = module_kinds(config)
        known = set(self.kinds)
        self.names = {}  # parameter name -> stored name
        for name in [*self.reader.specs, *self.reader.plain_names()]:
            param = resolve_name(name, known, prefix)
            if param is not None:
                self.names[param] = name
        self.used: set[str] = set()

    def has(self, param: str) -> bool:
        return param in self.names

    def _name(self, param: str) -> str:
        if param not in self.names:
            raise ExportError(f"{self.reader.folder}: no tensor for {param}; the folder does not match its config.json")
        self.used.add(self.names[param])
        return self.names[param]

    def matrix(self, param: str) -> Matrix:
        name = self._name(param)
        if name in self.reader.specs:
            return Matrix(name, spec=self.reader.specs[name], arrays=self.reader.quantized_arrays(name))
        array = self.reader.raw(name)
        return Matrix(name, plain=array.T if self.kinds.get(param) == "conv1d" else array)

    def vector(self, param: str) -> np.ndarray | None:
        """A bias or norm weight as float32, None when the model has none."""
        return np.asarray(self.reader.raw(self._name(param)), dtype=np.float32) if self.has(param) else None

    def check_all_quantized_used(self) -> None:
        missing = sorted(set(self.reader.specs) - self.used)
        if missing:
            raise ExportError(f"{self.reader.folder}: quantized weights {missing[:3]} have no place in the decode "
                              "graph of this architecture; this folder's export is not supported")


class DecoderGraph:
    """Nodes and initializers of one decode graph; `build()` returns the ModelProto."""

    def __init__(self, tensors: FolderTensors, config, target: str, act_quant: bool, accuracy_level: int,
                 opset: int):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.tensors, self.config, self.target = tensors, config, target
        self.act_quant, self.accuracy_level, self.opset = act_quant, accuracy_level, opset
        self.nodes: list = []
        self.inits: dict[str, object] = {}
        self.quantized_inputs: dict[str, str] = {}  # activation -> its int8 rounding (shared by its readers)
        self.packed: set[str] = set()  # the folder's quantized weights the graph reads in their packed form
        self.n_layers = config.num_hidden_layers
        self.n_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads

    # -- plumbing ------------------------------------------------------------------------------------------

    def const(self, name: str, array) -> str:
        if name not in self.inits:
            self.inits[name] = self.numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "", outputs=None,
           **attrs):
        outputs = outputs or ([name] if n_out == 1 else [f"{name}:{i}" for i in range(n_out)])
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs[0] if n_out == 1 else outputs

    @property
    def n_packed(self) -> int:
        return len(self.packed)

    def _mark_packed(self, m: Matrix) -> None:
        self.packed.update(m.sources or (m.name,))

    def _reduce_max_last(self, x: str, name: str) -> str:
        if self.opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
            return self.op("ReduceMax", [x, self.const("bitconv.axis_last", np.array([-1], np.int64))], name,
                           keepdims=1)
        return self.op("ReduceMax", [x], name, axes=[-1], keepdims=1)

    def int8_rounded(self, x: str) -> str:
        """x rounded to int8 per token as `quantize_activations_int8` does (stock targets with int8 activations)."""
        if x not in self.quantized_inputs:
            n = f"{x}/int8"
            amax = self.op("Max", [self._reduce_max_last(self.op("Abs", [x], n + "/abs"), n + "/amax"),
                                   self.const("bitconv.amax_floor", np.array(1e-5, np.float32))], n + "/floor")
            s = self.op("Div", [self.const("bitconv.int8_max", np.array(127.0, np.float32)), amax], n + "/scale")
            q = self.op("Round", [self.op("Mul", [x, s], n + "/scaled")], n + "/round")
            q = self.op("Clip", [q, self.const("bitconv.int8_lo", np.array(-128.0, np.float32)),
                                 self.const("bitconv.int8_hi", np.array(127.0, np.float32))], n + "/clip")
            self.quantized_inputs[x] = self.op("Div", [q, s], n)
        return self.quantized_inputs[x]

    # -- projections -------------------------------------------------------------------------------------

    def linear(self, x: str, m: Matrix, bias: np.ndarray | None, name: str, block: bool = True) -> str:
        """x @ m.T (+ bias); `block`: a block projection, whose input the int8 activation mode rounds."""
        from bitconv import ort as bort

        n_out, n_in = m.shape
        bias_name = self.const(f"{m.name}.bias", bias.astype(np.float32)) if bias is not None else None
        if block and self.act_quant and m.spec is not None and not (self.target == "op" and m.scheme == "ternary"):
            x = self.int8_rounded(x)
        product = name + "/product" if bias_name else name
        if m.spec is None:
            w16 = self.const(m.name, m.plain.astype(np.float16))
            if self.target == "op":
                y = self.op(bort.HALF_OP_TYPE, [x, w16], product, domain=bort.OP_DOMAIN)
            else:  # ONNX Runtime folds the cast and the transpose of a constant at session creation
                w = self.op("Transpose", [self.op("Cast", [w16], f"{m.name}/cast", to=1)], f"{m.name}/transpose",
                            perm=[1, 0])
                y = self.op("MatMul", [x, w], product)
        elif self.target == "float":
            if m.name in self.inits:  # a tied head: the dequantized table [out, in] is already stored
                w = self.op("Transpose", [m.name], f"{m.name}/transpose", perm=[1, 0])
            else:
                w = self.const(m.name + ".T", np.ascontiguousarray(m.dequantized().T))
            y = self.op("MatMul", [x, w], product)
        elif self.target == "op":
            self._mark_packed(m)
            codes = self.const(m.name + SUFFIX_CODES, m.arrays[SUFFIX_CODES])
            scale = self.const(m.name + SUFFIX_SCALE, np.asarray(m.arrays[SUFFIX_SCALE], dtype=np.float32))
            group = int(m.spec.group_size) if m.spec.granularity == "group" else 0
            if m.scheme == "int8":
                return self.op(bort.INT8_OP_TYPE, [x, codes, scale] + ([bias_name] if bias_name else []), name,
                               domain=bort.OP_DOMAIN, group_size=group)
            inputs = [x, codes, scale]
            if m.spec.n_outliers:
                inputs += [self.const(m.name + SUFFIX_OUTLIER_IDX, m.arrays[SUFFIX_OUTLIER_IDX]),
                           self.const(m.name + SUFFIX_OUTLIER_VAL, m.arrays[SUFFIX_OUTLIER_VAL])]
            if bias_name:
                inputs += ["", ""] * (not m.spec.n_outliers) + [bias_name]
            return self.op(bort.OP_TYPE, inputs, name, domain=bort.OP_DOMAIN, K=n_in, N=n_out, group_size=group,
                           act_quant=int(self.act_quant and block), packing=bort.PACKING_CODES[m.spec.packing])
        else:
            if m.spec.n_outliers:
                raise ExportError(f"{m.name}: {m.spec.n_outliers} fp16 outliers cannot be expressed by MatMulNBits; "
                                  "use --target op (the op adds them), --target float, or convert with "
                                  "--keep-outliers 0")
            self._mark_packed(m)
            b, scales, block_size, bits = matmulnbits_initializers(m)
            inputs = [x, self.const(m.name + ".nbits_b", b), self.const(m.name + ".nbits_scales", scales)]
            return self.op("MatMulNBits", inputs + (["", "", bias_name] if bias_name else []), name,
                           domain=MS_DOMAIN, K=n_in, N=n_out, bits=bits, block_size=block_size,
                           accuracy_level=self.accuracy_level)
        return self.op("Add", [y, bias_name], name) if bias_name else y

    def projections(self, x: str, params: list[str], name: str) -> list[str]:
        """The named projections of x (weights `params[i] + '.weight'`, biases where the model has them): one
        stacked projection split into its parts when they are stored alike, else one projection each."""
        mats = [self.tensors.matrix(p + ".weight") for p in params]
        biases = [self.tensors.vector(p + ".bias") for p in params]
        if len(mats) == 1:
            return [self.linear(x, mats[0], biases[0], f"{params[0]}/matmul")]
        stacked = stack_rows(mats, f"{name}.weight")
        if stacked is None:
            return [self.linear(x, m, b, f"{p}/matmul") for m, b, p in zip(mats, biases, params)]
        bias = None
        if any(b is not None for b in biases):
            bias = np.concatenate([b if b is not None else np.zeros(m.shape[0], np.float32)
                                   for b, m in zip(biases, mats)])
        y = self.linear(x, stacked, bias, f"{name}/matmul")
        return [y]

    def split(self, y: str, sizes: list[int], name: str) -> list[str]:
        return self.op("Split", [y, self.const(f"{name}.sizes", np.array(sizes, np.int64))], name,
                       n_out=len(sizes), axis=-1)

    def embedding(self, ids: str, m: Matrix, name: str) -> str:
        """Rows of the table m [rows, width] for ids, float32; gathered as stored (float16 or int8)."""
        rows, width = m.shape
        if m.spec is None:
            table = self.const(m.name, m.plain.astype(np.float16))
            return self.op("Cast", [self.op("Gather", [table, ids], f"{name}/gather")], name, to=1)
        if m.scheme != "int8" or self.target == "float":
            return self.op("Gather", [self.const(m.name, m.dequantized()), ids], name)
        self._mark_packed(m)
        codes = self.op("Cast", [self.op("Gather", [self.const(m.name + SUFFIX_CODES, m.arrays[SUFFIX_CODES]), ids],
                                         f"{name}/gather")], f"{name}/cast", to=1)
        scale = self.op("Gather", [self.const(m.name + SUFFIX_SCALE, m.arrays[SUFFIX_SCALE]), ids],
                        f"{name}/gather_scale")
        axis = self.const("bitconv.axis_last", np.array([-1], np.int64))
        scale = self.op("Unsqueeze", [scale, axis], f"{name}/scale")
        if m.spec.granularity != "group":
            return self.op("Mul", [codes, scale], name)
        group = int(m.spec.group_size)
        if width % group:
            raise ExportError(f"{m.name}: int8 groups of {group} do not divide the embedding width {width}; "
                              "convert with a group size that divides it, or per channel")
        blocks = self.op("Reshape", [codes, self.const(f"{name}.blocks", np.array([0, 0, -1, group], np.int64))],
                         f"{name}/blocks")
        scaled = self.op("Mul", [blocks, scale], f"{name}/scaled")
        return self.op("Reshape", [scaled, self.const(f"{name}.rows", np.array([0, 0, width], np.int64))], name)

    def head(self, x: str, embed_param: str) -> str:
        """The lm_head: its own weight if the folder has one, else the tied embedding table (stored once)."""
        tied = not self.tensors.has("lm_head.weight")
        m = self.tensors.matrix(embed_param if tied else "lm_head.weight")
        self.vocab_size = m.shape[0]
        return self.linear(x, m, self.tensors.vector("lm_head.bias"), "logits", block=False)

    # -- attention ---------------------------------------------------------------------------------------

    def sequence_lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's seqlens_k (each row's length - 1) and total_sequence_length, from the mask."""
        total = self.op("Shape", ["attention_mask"], "total_sequence_length/shape", start=1, end=2)
        total = self.op("Cast", [total], "total_sequence_length", to=6)
        one = self.const("bitconv.one", np.array(1, np.int64))
        lengths = self.op("ReduceSum", ["attention_mask", one], "seqlens/sum", keepdims=0)
        last = self.op("Sub", [lengths, one], "seqlens/last")
        return self.op("Cast", [last], "seqlens_k", to=6), total

    def attention(self, qkv: list[str], i: int, lengths: tuple[str, str], scale: float,
                  rotary: tuple[str, str] | None) -> str:
        inputs = (qkv if len(qkv) == 3 else [qkv[0], "", ""]) + [f"past_key_values.{i}.key",
                                                                 f"past_key_values.{i}.value", *lengths]
        if rotary:
            inputs += list(rotary)
        name = f"layers.{i}/attention"
        out = self.op("GroupQueryAttention", inputs, name, domain=MS_DOMAIN,
                      outputs=[name, f"present.{i}.key", f"present.{i}.value"], num_heads=self.n_heads,
                      kv_num_heads=self.kv_heads, scale=float(scale), do_rotary=int(rotary is not None),
                      rotary_interleaved=0)
        return out

    def skip_norm(self, x: str, residual: str, weight: np.ndarray, bias: np.ndarray | None, eps: float,
                  name: str, residual_out: bool = True) -> tuple[str, str]:
        """norm(x + residual) and x + residual, in one SkipLayerNormalization (or its RMS twin without a bias)."""
        inputs = [x, residual, self.const(f"{name}.weight", weight)]
        op_type = "SkipSimplifiedLayerNormalization"
        if bias is not None:
            op_type = "SkipLayerNormalization"
            inputs.append(self.const(f"{name}.bias", bias))
        outputs = [name, "", "", f"{name}/residual"] if residual_out else [name]
        self.op(op_type, inputs, name, domain=MS_DOMAIN, outputs=outputs, epsilon=float(eps))
        return name, outputs[-1]

    # -- architectures -----------------------------------------------------------------------------------

    def gpt2(self) -> None:
        c, t = self.config, self.tensors
        act = _GPT2_ACTIVATIONS.get(c.activation_function)
        if act is None or getattr(c, "add_cross_attention", False):
            raise ExportError(f"GPT-2 with activation {c.activation_function!r}"
                              f"{' and cross-attention' if c.add_cross_attention else ''} is not supported by the "
                              f"decode graph; supported activations: {', '.join(_GPT2_ACTIVATIONS)}")
        eps = c.layer_norm_epsilon
        tok = self.embedding("input_ids", t.matrix("transformer.wte.weight"), "embed_tokens")
        pos = self.embedding("position_ids", t.matrix("transformer.wpe.weight"), "embed_positions")
        lengths = self.sequence_lengths()
        x, residual = tok, pos
        for i in range(self.n_layers):
            p = f"transformer.h.{i}"
            h, residual = self.skip_norm(x, residual, t.vector(f"{p}.ln_1.weight"), t.vector(f"{p}.ln_1.bias"),
                                         eps, f"{p}.ln_1")
            # c_attn is one matrix whose output is q | k | v: GroupQueryAttention's packed layout
            qkv = self.projections(h, [f"{p}.attn.c_attn"], f"{p}.attn.c_attn")
            scale = self.head_dim ** -0.5 if c.scale_attn_weights else 1.0
            if c.scale_attn_by_inverse_layer_idx:
                scale /= i + 1
            attn = self.attention(qkv, i, lengths, scale, None)
            o = self.linear(attn, t.matrix(f"{p}.attn.c_proj.weight"), t.vector(f"{p}.attn.c_proj.bias"),
                            f"{p}.attn.c_proj/matmul")
            h, residual = self.skip_norm(o, residual, t.vector(f"{p}.ln_2.weight"), t.vector(f"{p}.ln_2.bias"),
                                         eps, f"{p}.ln_2")
            fc = self.linear(h, t.matrix(f"{p}.mlp.c_fc.weight"), t.vector(f"{p}.mlp.c_fc.bias"),
                             f"{p}.mlp.c_fc/matmul")
            op_type, domain = act
            attrs = {"alpha": 1.0} if op_type == "QuickGelu" else {}
            fc = self.op(op_type, [fc], f"{p}.mlp.act", domain=domain, **attrs)
            x = self.linear(fc, t.matrix(f"{p}.mlp.c_proj.weight"), t.vector(f"{p}.mlp.c_proj.bias"),
                            f"{p}.mlp.c_proj/matmul")
        h, _ = self.skip_norm(x, residual, t.vector("transformer.ln_f.weight"), t.vector("transformer.ln_f.bias"),
                              eps, "transformer.ln_f", residual_out=False)
        self.head(h, "transformer.wte.weight")

    def _rotary_caches(self) -> tuple[str, str]:
        """cos/sin [max_positions, head_dim / 2] exactly as transformers' rotary embedding computes them."""
        import torch
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rotary = LlamaRotaryEmbedding(self.config)
        if getattr(rotary, "rope_type", "default") == "dynamic":
            raise ExportError("dynamic RoPE scaling changes with the sequence length; the decode graph supports "
                              "static RoPE types only")
        n_pos = self.config.max_position_embeddings
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, 1, self.head_dim), torch.arange(n_pos)[None])
        half = self.head_dim // 2
        return (self.const("rotary.cos", cos[0, :, :half].float().numpy()),
                self.const("rotary.sin", sin[0, :, :half].float().numpy()))

    def llama(self) -> None:
        c, t = self.config, self.tensors
        if c.hidden_act != "silu":
            raise ExportError(f"Llama with hidden_act {c.hidden_act!r}: the decode graph supports silu")
        eps = c.rms_norm_eps
        x = self.embedding("input_ids", t.matrix("model.embed_tokens.weight"), "embed_tokens")
        lengths = self.sequence_lengths()
        rotary = self._rotary_caches()
        residual = None
        for i in range(self.n_layers):
            p = f"model.layers.{i}"
            norm = t.vector(f"{p}.input_layernorm.weight")
            if residual is None:  # the first block has no residual to add yet
                h = self.op("SimplifiedLayerNormalization", [x, self.const(f"{p}.input_layernorm.weight", norm)],
                            f"{p}.input_layernorm", epsilon=float(eps), axis=-1)
                residual = x
            else:
                h, residual = self.skip_norm(x, residual, norm, None, eps, f"{p}.input_layernorm")
            a = f"{p}.self_attn"
            qkv = self.projections(h, [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], f"{a}.qkv_proj")
            attn = self.attention(qkv, i, lengths, self.head_dim ** -0.5, rotary)
            o = self.linear(attn, t.matrix(f"{a}.o_proj.weight"), t.vector(f"{a}.o_proj.bias"), f"{a}.o_proj/matmul")
            h, residual = self.skip_norm(o, residual, t.vector(f"{p}.post_attention_layernorm.weight"), None, eps,
                                         f"{p}.post_attention_layernorm")
            mlp = f"{p}.mlp"
            gate_up = self.projections(h, [f"{mlp}.gate_proj", f"{mlp}.up_proj"], f"{mlp}.gate_up_proj")
            if len(gate_up) == 1:
                gate_up = self.split(gate_up[0], [c.intermediate_size] * 2, f"{mlp}.gate_up_proj/split")
            act = self.op("QuickGelu", [gate_up[0]], f"{mlp}.act", domain=MS_DOMAIN, alpha=1.0)
            prod = self.op("Mul", [act, gate_up[1]], f"{mlp}.gated")
            x = self.linear(prod, t.matrix(f"{mlp}.down_proj.weight"), t.vector(f"{mlp}.down_proj.bias"),
                            f"{mlp}.down_proj/matmul")
        h, _ = self.skip_norm(x, residual, t.vector("model.norm.weight"), None, eps, "model.norm",
                              residual_out=False)
        self.head(h, "model.embed_tokens.weight")

    def build(self, model_type: str):
        """The ModelProto: inputs, outputs and opsets around the nodes of `gpt2()` or `llama()`."""
        from onnx import TensorProto

        from bitconv import ort as bort

        getattr(self, model_type)()
        self.tensors.check_all_quantized_used()
        h = self.helper
        ids = ["batch", "sequence"]
        inputs = [h.make_tensor_value_info("input_ids", TensorProto.INT64, ids),
                  h.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])]
        if model_type == "gpt2":
            inputs.append(h.make_tensor_value_info("position_ids", TensorProto.INT64, ids))
        outputs = [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", self.vocab_size])]
        for i in range(self.n_layers):
            for kv in ("key", "value"):
                inputs.append(h.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT,
                                                       ["batch", self.kv_heads, "past_sequence", self.head_dim]))
                outputs.append(h.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT,
                                                        ["batch", self.kv_heads, "present_sequence", self.head_dim]))
        graph = h.make_graph(self.nodes, f"bitconv-{model_type}-decoder", inputs, outputs,
                             initializer=list(self.inits.values()))
        opsets = [h.make_opsetid("", self.opset), h.make_opsetid(MS_DOMAIN, 1)]
        if self.target == "op":
            opsets.append(h.make_opsetid(bort.OP_DOMAIN, bort.OP_DOMAIN_VERSION))
        model = h.make_model(graph, opset_imports=opsets, producer_name="bitconv")
        model.ir_version = min(model.ir_version, 9)
        return model
