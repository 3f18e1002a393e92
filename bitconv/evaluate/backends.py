"""Model backends for evaluation: one small interface, so every task runs the same way on every runtime.

A backend turns a batch of token ids (or, for image classifiers, pixel values) into logits. Perplexity,
classification and latency only ever call `Backend.logits`, so a model gives the same numbers whichever way
it was loaded (an original checkpoint, a bitconv folder, or an ONNX file), up to the runtime's float
arithmetic. Inputs go to the backend's device; the logits come back on it.

    backend = open_backend("./smol-1.58", device="cuda")
    logits = backend.logits(input_ids, attention_mask)   # [batch, tokens, vocab] or [batch, labels]

New runtimes register an opener with `register_opener(matches, opener)`; the first opener whose `matches(path)`
is true wins, and the torch backend takes everything else. Openers take (source, device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bitconv.device import pick_device
from bitconv.errors import BitconvError, OptionError, SourceError

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
IMAGE_CLASSIFICATION = "image-classification"
OTHER = "other"


@dataclass
class Backend:
    """What every task needs from a model, whatever runs it.

    `kind` is CAUSAL_LM (logits [batch, tokens, vocab]), SEQUENCE_CLASSIFICATION or IMAGE_CLASSIFICATION
    (logits [batch, labels]) or OTHER. `tokenizer` is None for image classifiers, which have an
    `image_processor` instead (pixels -> `pixel_values`). `module` is the torch model when there is one (the
    cost measurements read its tensors).
    """

    source: str
    runtime: str  # "torch", "onnxruntime"
    origin: str  # "bitconv" (a converted folder), "original" (Hub id, folder, GGUF), "onnx", "training" (in memory)
    kind: str
    config: object
    tokenizer: object
    forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    module: torch.nn.Module | None = None
    quantization_config: dict | None = None
    weight_files: list[Path] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    image_processor: object | None = None

    def logits(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [batch, tokens] (with their mask) or pixel values [batch, channels, h, w] -> float logits."""
        inputs = inputs.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        with torch.inference_mode():
            return self.forward(inputs, attention_mask).float()

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model accepts, from its config (None when the config does not say)."""
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def architecture(self) -> str:
        archs = getattr(self.config, "architectures", None) or []
        return archs[0] if archs else type(self.module).__name__ if self.module is not None else "unknown"

    def id2label(self) -> dict[int, str]:
        mapping = getattr(self.config, "id2label", None) or {}
        return {int(k): str(v) for k, v in mapping.items()}


_OPENERS: list[tuple[Callable[[Path], bool], Callable[[str, torch.device], Backend]]] = []


def register_opener(matches: Callable[[Path], bool], opener: Callable[[str, torch.device], Backend]) -> None:
    """Adds a runtime: `opener(source, device)` is used for every source path where `matches(path)` is true."""
    _OPENERS.append((matches, opener))


def open_backend(source: str | os.PathLike, device: str = "cpu") -> Backend:
    """The model at `source` (bitconv folder, Hub id, HF folder, .gguf, .onnx) behind the Backend interface,
    on `device` (auto, cpu, cuda, cuda:N; bitconv.device)."""
    dev = pick_device(device)
    path = Path(str(source)).expanduser()
    for matches, opener in _OPENERS:
        if matches(path):
            return opener(str(source), dev)
    return open_torch_backend(str(source), dev)


def model_kind(class_name: str) -> str:
    """CAUSAL_LM, SEQUENCE_CLASSIFICATION, IMAGE_CLASSIFICATION or OTHER, from a transformers class name."""
    if class_name.endswith(("ForCausalLM", "LMHeadModel")):
        return CAUSAL_LM
    if class_name.endswith("ForSequenceClassification"):
        return SEQUENCE_CLASSIFICATION
    if class_name.endswith("ForImageClassification"):
        return IMAGE_CLASSIFICATION
    return OTHER


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".onnx", ".data"))
    return []


def open_torch_backend(source: str, device: torch.device = torch.device("cpu")) -> Backend:
    """A transformers model: a bitconv folder through bitconv.load, anything else as the original checkpoint."""
    from transformers.utils import logging as hf_logging

    from bitconv.format.reader import is_bitconv_folder
    from bitconv.quantize.modeling import load_any
    from bitconv.quantize.source import load_image_processor, load_tokenizer, open_source

    hf_logging.disable_progress_bar()  # transformers' per-load bar would interleave with bitconv's own
    path = Path(source).expanduser()
    if not path.exists() and (source.startswith((".", "/", "~")) or source.endswith((".gguf", ".onnx"))):
        raise SourceError(f"{source}: no such model file or folder")
    model = load_any(source).to(device)
    kind = model_kind(type(model).__name__)
    tokenizer = processor = None
    if kind == IMAGE_CLASSIFICATION:
        processor = load_image_processor(source)
    else:
        tokenizer = load_tokenizer(source)
    is_bitconv = path.is_dir() and is_bitconv_folder(path)
    if not path.exists():  # a Hub id: its files are in the local cache
        path = Path(open_source(source).folder)

    return Backend(source=source, runtime="torch", origin="bitconv" if is_bitconv else "original", kind=kind,
                   config=model.config, tokenizer=tokenizer, forward=_torch_forward(model, kind), module=model,
                   quantization_config=getattr(model, "bitconv_config", None), weight_files=_weight_files(path),
                   device=device, image_processor=processor)


def _torch_forward(model: torch.nn.Module, kind: str) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    def forward(inputs: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if kind == IMAGE_CLASSIFICATION:
            return model(pixel_values=inputs).logits
        if kind == CAUSAL_LM:  # scoring needs no key/value cache: building one costs memory, and it recompiles the
            # blocks `recover --compile` compiled (one graph per layer's cache state, past torch's limit)
            return model(input_ids=inputs, attention_mask=attention_mask, use_cache=False).logits
        return model(input_ids=inputs, attention_mask=attention_mask).logits

    return forward


def module_backend(model: torch.nn.Module, tokenizer, source: str, image_processor=None) -> Backend:
    """A model held in memory (`recover` measures the one it trains) behind the same interface, so it is
    scored by the same metric code as `bitconv eval` scores a folder. Inputs go to the model's device."""
    kind = model_kind(type(model).__name__)
    return Backend(source=source, runtime="torch", origin="training", kind=kind, config=model.config,
                   tokenizer=tokenizer, forward=_torch_forward(model, kind), module=model,
                   device=next(model.parameters()).device, image_processor=image_processor)


# ---------------------------------------------------------------------------------------------------------
# ONNX Runtime: a graph whose first output is the logits and whose inputs are among the names below


ONNX_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
PAST_PREFIX = "past_key_values."  # decoders exported by bitconv.export.onnx take a key/value cache
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _onnx_session(path: Path, device: torch.device):
    """A session for `path`; graphs that use bitconv's custom op get its library registered (bitconv.ort)."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise SourceError(f"{path}: evaluating ONNX models needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise SourceError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    custom = sorted({o.domain for o in graph.opset_import if o.domain not in STANDARD_DOMAINS})
    if device.type != "cpu":
        # bitconv's op and the CPU provider are what bitconv exports for; a GPU provider is not set up here
        raise OptionError(f"{path}: ONNX models are evaluated on the CPU (ONNX Runtime's CPU provider); "
                          "pass --device cpu, or evaluate the bitconv folder on the GPU")
    if not custom:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]), graph
    try:
        from bitconv import ort
    except ImportError:
        raise SourceError(f"{path}: uses custom ops of domain {', '.join(custom)}, but this bitconv has no op library "
                           "(bitconv.ort); install a bitconv build that includes the ONNX Runtime op") from None
    try:
        return ort.session(path), graph
    except BitconvError as exc:  # the op library is missing or does not load: say which model needed it
        raise SourceError(f"{path}: uses custom ops of domain {', '.join(custom)}; {exc}") from None


def open_onnx_backend(source: str, device: torch.device = torch.device("cpu")) -> Backend:
    import numpy as np

    from bitconv.quantize.source import load_tokenizer

    path = Path(source).expanduser()
    if not path.is_file():
        raise SourceError(f"{path}: no such ONNX model file")
    session, graph = _onnx_session(path, device)
    names = [i.name for i in session.get_inputs() if not i.name.startswith(PAST_PREFIX)]
    # an empty cache [batch, kv_heads, 0, head_dim] per past input: every window is scored from scratch
    past = [(i.name, i.shape) for i in session.get_inputs() if i.name.startswith(PAST_PREFIX)]
    unknown = [n for n in names if n not in ONNX_INPUTS]
    unknown += [n for n, shape in past if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[1], shape[3]))]
    if unknown or "input_ids" not in names:
        raise SourceError(f"{path}: graph inputs {names + [n for n, _ in past]}; bitconv eval feeds only "
                           f"{', '.join(ONNX_INPUTS)} and empty {PAST_PREFIX}* caches (input_ids required)")
    if not (path.parent / "config.json").is_file():
        raise SourceError(f"{path}: no config.json beside it; keep the config and tokenizer files that "
                           "`bitconv export` copies next to the .onnx")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path.parent))
    tokenizer = load_tokenizer(path.parent)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
                 "token_type_ids": torch.zeros_like(input_ids)}
        feed = {n: feeds[n].numpy().astype(np.int64) for n in names}
        batch = input_ids.shape[0]
        feed.update({n: np.zeros((batch, shape[1], 0, shape[3]), dtype=np.float32) for n, shape in past})
        out = session.run([session.get_outputs()[0].name], feed)[0]
        return torch.from_numpy(out)

    archs = getattr(config, "architectures", None) or [""]
    kind = model_kind(archs[0])
    files = [path] + sorted(p for p in path.parent.glob(path.name + ".data"))
    qc = getattr(config, "quantization_config", None)
    return Backend(source=source, runtime="onnxruntime", origin="onnx", kind=kind, config=config, tokenizer=tokenizer,
                   forward=forward, quantization_config=qc if isinstance(qc, dict) else None, weight_files=files)


register_opener(lambda p: p.suffix == ".onnx", open_onnx_backend)
