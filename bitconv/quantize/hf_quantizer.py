"""transformers' quantizer for bitconv folders (`quant_method: bitconv`), registered with transformers' public
registry when this module is imported: `import bitconv` imports it as soon as transformers' quantizers are imported
(bitconv/__init__.py).

`from_pretrained` then builds the model on the meta device, this quantizer puts packed modules where the folder
holds quantized weights (bitconv.quantize.modeling), and transformers' own loader reads the stored tensors into
them: `X.weight.qcodes` -> buffer `X.qcodes`, after the model's own key renaming (ViT's `attention.attention.key`,
GPT-NeoX's `embed_out`), with device_map, dtype and Hub download as for any model.

The token embedding (an exact nn.Embedding) stays packed too. Any other module holding a quantized weight (position
and token-type tables, nn.Embedding subclasses such as Gemma3's scaled embeddings) keeps its class: it receives the
stored tensors and its weight is decoded once after loading.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils import logging
from transformers.utils.quantization_config import QuantizationConfigMixin

from bitconv.errors import FormatError, OptionError
from bitconv.format.reader import PackedReader
from bitconv.format.spec import TensorSpec
from bitconv.format.vocab import FORMAT_VERSION, QUANT_METHOD, TRANSFORMERS_GUARD, TRANSFORMERS_GUARD_KEY
from bitconv.quantize.config import QuantConfig
from bitconv.quantize.kinds import CONV1D, EMBEDDING, LINEAR, linear_weight, module_kind
from bitconv.quantize.modeling import (
    STORED_SUFFIXES,
    PackedEmbedding,
    PackedLinear,
    TiedPacked,
    decode_stored,
    dequantize_modules,
    register_stored_buffers,
    replace_module,
)

logger = logging.get_logger(__name__)


def check_readable(qc: dict) -> QuantConfig:
    """The conversion options of a quantization_config, after checking this bitconv can read its format version."""
    version = qc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise FormatError(f"quantization_config.format_version is {version!r}, not a version number; re-convert the model")
    if version > FORMAT_VERSION:
        raise FormatError(f"this folder is bitconv format version {version}, this bitconv reads version {FORMAT_VERSION} "
                          "and older; upgrade bitconv (pip install -U bitconv)")
    return QuantConfig.from_dict(qc)


class BitconvConfig(QuantizationConfigMixin):
    """config.json's quantization_config of a bitconv folder as transformers holds it: the recorded keys, unchanged."""

    def __init__(self, **recorded):
        self.options = check_readable(recorded)
        self.quant_method = QUANT_METHOD
        self.recorded = recorded

    def to_dict(self) -> dict:
        return dict(self.recorded)


def _check_device_map(device_map: dict | None) -> None:
    """A device_map naming a GPU this machine lacks fails here in one line, not deep inside torch."""
    n_gpus = torch.cuda.device_count()
    for device in (device_map or {}).values():
        if isinstance(device, int):
            device = torch.device("cuda", device)
        elif isinstance(device, str) and device not in ("cpu", "disk", "meta"):
            device = torch.device(device)
        if isinstance(device, torch.device) and device.type == "cuda" and (device.index or 0) >= n_gpus:
            raise OptionError(f"device_map asks for {device}, but this machine has {n_gpus} CUDA GPU(s); "
                              "pass device_map='cpu' (or leave it out) or a GPU it has")


def model_weight_names(model, specs: dict[str, TensorSpec]) -> dict[str, str]:
    """Stored weight name -> the model's parameter name, renamed as transformers' loader will rename it."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    params = model.state_dict()
    names = {}
    for name in specs:
        target, converted = rename_source_key(name, renamings, converters, model.base_model_prefix, params)
        if target not in params and name in params:  # as the loader: a key that matches as it is stays as it is
            target, converted = name, None
        if converted is not None:
            raise FormatError(f"quantized tensor '{name}' is split or merged by transformers when it loads "
                              f"{type(model).__name__}, which packed codes cannot be; re-convert with --keep '{name}'")
        if target not in params or not target.endswith(".weight"):
            raise FormatError(f"quantized tensor '{name}' has no place in {type(model).__name__}; "
                              "the folder does not match its config.json")
        names[name] = target
    return names


class BitconvHfQuantizer(HfQuantizer):
    """Loads bitconv folders with their weights packed; it never quantizes a float model (use `bitconv convert`)."""

    requires_calibration = True
    quantization_config: BitconvConfig

    def __init__(self, quantization_config: BitconvConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.decode_on_load: dict[str, TensorSpec] = {}  # module path -> spec of the weight decoded after loading
        self.ties_to_restore: list[tuple[str, str]] = []  # (target, source) parameters tied after that decoding
        self.hidden_weights: list = []  # state-dict hooks of the weights that wait for that decoding

    def validate_environment(self, device_map=None, **kwargs) -> None:
        missing = [hook for hook in ("update_attn_implementation", "update_weight_conversions")
                   if not hasattr(HfQuantizer, hook)]
        if missing:  # older transformers load quantized weights another way (tested: transformers 5.24)
            raise ImportError(f"loading bitconv folders needs a newer transformers (its quantizers lack {missing[0]}); "
                              "pip install -U transformers")
        _check_device_map(device_map)

    def update_attn_implementation(self, config):
        # the guard that makes transformers without bitconv refuse the folder (formats/SPEC.md) is not for us
        if getattr(config, TRANSFORMERS_GUARD_KEY, None) == TRANSFORMERS_GUARD:
            delattr(config, TRANSFORMERS_GUARD_KEY)
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not checkpoint_files:
            raise FormatError("a bitconv model loads from its folder's packed files, not from a state_dict")
        reader = PackedReader(Path(checkpoint_files[0]).parent)
        _check_stored(reader)
        activations = self.quantization_config.options.activations
        dtype = model.dtype
        packed_embeddings: dict[str, PackedEmbedding] = {}
        for name, target in model_weight_names(model, reader.specs).items():
            spec, path = reader.specs[name], target.removesuffix(".weight")
            module = model.get_submodule(path)
            kind = module_kind(module)
            if tuple(linear_weight(module).shape) != spec.shape:
                raise FormatError(f"quantized tensor '{name}' has shape {list(spec.shape)}, {type(model).__name__} "
                                  f"needs {list(linear_weight(module).shape)}; the folder does not match its config.json")
            if kind in (LINEAR, CONV1D):
                replace_module(model, path, PackedLinear(spec, module.bias, activations, dtype, device="meta"))
            elif type(module) is nn.Embedding and module is model.get_input_embeddings():
                packed_embeddings[path] = PackedEmbedding(spec, module.padding_idx, dtype, device="meta")
                replace_module(model, path, packed_embeddings[path])
            else:
                register_stored_buffers(module, spec, device="meta")
                self._hide_weight(module)
                self.decode_on_load[path] = spec
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        for target, source in list(tied.items()):
            source_path, target_path = source.removesuffix(".weight"), target.removesuffix(".weight")
            if source_path in packed_embeddings:
                target_module = model.get_submodule(target_path)
                as_linear = module_kind(target_module) != EMBEDDING
                tied_packed = TiedPacked(packed_embeddings[source_path], as_linear, activations,
                                         getattr(target_module, "bias", None) if as_linear else None)
                replace_module(model, target_path, tied_packed)
            elif source_path in self.decode_on_load:
                self._hide_weight(model.get_submodule(target_path))
                self.ties_to_restore.append((target, source))
            else:
                continue
            del tied[target]  # transformers would tie to a weight that is not there yet

    def _hide_weight(self, module: nn.Module) -> None:
        """Until the decoded weights are set, the module's weight stays on the meta device, out of the state dict:
        not "missing" (transformers would warn and allocate it) and no memory (the model's own weight
        initialisation writes into meta tensors for nothing)."""
        def hide(module, state_dict, prefix, local_metadata):
            state_dict.pop(prefix + "weight", None)

        self.hidden_weights.append(module.register_state_dict_post_hook(hide))

    def update_weight_conversions(self, weight_conversions, model):
        # after the model's own renaming: `X.weight.qcodes` -> the packed module's buffer `X.qcodes`
        return [*weight_conversions,
                *(WeightRenaming(rf"\.weight\{suffix}$", suffix) for suffix in STORED_SUFFIXES)]

    def _process_model_after_weight_loading(self, model, **kwargs):
        dtype = model.dtype
        for path, spec in self.decode_on_load.items():
            module = model.get_submodule(path)
            weight = decode_stored(module, spec, dtype)
            for suffix in STORED_SUFFIXES:
                del module._buffers[suffix[1:]]
            module.weight = nn.Parameter(weight.t().contiguous() if spec.layout == "conv1d" else weight,
                                         requires_grad=False)
        for target, source in self.ties_to_restore:
            target_path, _, attr = target.rpartition(".")
            setattr(model.get_submodule(target_path), attr, model.get_parameter(source))
            model.all_tied_weights_keys[target] = source
        for handle in self.hidden_weights:
            handle.remove()
        model.bitconv_config = self.quantization_config.to_dict()
        return model

    def _dequantize(self, model, dtype=None):
        return dequantize_modules(model, dtype)

    def is_serializable(self) -> bool:
        logger.warning("a bitconv model is saved as the bitconv folder it was loaded from (bitconv convert writes "
                       "it); for a float checkpoint call model.dequantize() first, then save_pretrained")
        return False

    @property
    def is_trainable(self) -> bool:
        return False


def _check_stored(reader: PackedReader) -> None:
    """Every quantized weight's stored tensors are in the files with the spec's dtype and shape (headers only)."""
    for name, spec in reader.specs.items():
        for suffix, (st_dtype, shape) in spec.stored().items():
            entry = reader.locations.get(name + suffix)
            if entry is None:
                raise FormatError(f"{reader.folder}: tensor '{name + suffix}' is missing from the packed files; "
                                  "re-download or re-convert the model")
            info = entry[1]
            if info["dtype"] != st_dtype or tuple(info["shape"]) != tuple(shape):
                raise FormatError(f"tensor '{name + suffix}' is {info['dtype']}{info['shape']}, the spec needs "
                                  f"{st_dtype}{list(shape)}; the file is corrupt")


def register() -> None:
    """Make transformers load `quant_method: bitconv` folders with this quantizer (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantization_config(QUANT_METHOD)(BitconvConfig)
        register_quantizer(QUANT_METHOD)(BitconvHfQuantizer)


register()
