"""Reads Hugging Face checkpoints tensor by tensor: a Hub id, a local folder, or a GGUF file.

Safetensors sources are read lazily, one tensor at a time (memory-mapped), so a conversion never holds the
whole model. A GGUF file is dequantized by transformers' own GGUF loader (that needs the whole model, which
is fine for the small models GGUF sources are used for here). Pickle `.bin` checkpoints are read only when
asked, with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bitconv.errors import SourceError
from bitconv.format.safetensors import read_safetensors_header
from bitconv.hub.ids import is_repo_id

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


@dataclass
class Source:
    """An opened checkpoint: its config, a local folder with its side files, and lazy access to tensors."""

    spec: str
    kind: str  # "folder", "hub", "gguf"
    folder: Path
    config: object
    revision: str | None = None
    gguf_file: str | None = None
    _files: dict[str, Path] = field(default_factory=dict)  # tensor name -> safetensors file
    _headers: dict[str, dict] = field(default_factory=dict)  # tensor name -> header entry
    _tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # in-memory sources (GGUF, pickle)
    _data_start: dict[Path, int] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self._tensors) if self._tensors else sorted(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._tensors:
            return tuple(self._tensors[name].shape)
        return tuple(self._headers[name]["shape"])

    def dtype(self, name: str) -> str:
        """A short dtype name: float32, float16, bfloat16, int64, ..."""
        if self._tensors:
            return str(self._tensors[name].dtype).replace("torch.", "")
        st = self._headers[name]["dtype"]
        return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}.get(st, st.lower())

    def file_of(self, name: str) -> str:
        return str(self._files.get(name, self.gguf_file or self.folder))

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read with plain file reads: a memory map would keep every page read so far resident."""
        if self._tensors:
            return self._tensors[name]
        path = self._files[name]
        info = self._headers[name]
        dtype = TORCH_DTYPES.get(info["dtype"])
        if dtype is None:
            raise SourceError(f"{path}: tensor '{name}' has dtype {info['dtype']}, which bitconv cannot read")
        begin, end = info["data_offsets"]
        expected = int(np.prod(info["shape"], dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        if end - begin != expected:
            raise SourceError(f"{path}: tensor '{name}' has {end - begin} bytes for shape {info['shape']}; the file is corrupt")
        if expected == 0:
            return torch.empty(info["shape"], dtype=dtype)
        buf = bytearray(expected)
        with open(path, "rb") as fh:
            fh.seek(self._data_start[path] + begin)
            if fh.readinto(buf) != expected:
                raise SourceError(f"{path}: truncated while reading '{name}'; re-download the checkpoint")
        return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"])

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.get(name)

    @property
    def n_bytes(self) -> int:
        """Bytes of weights as the source stores them (for a GGUF source: the file's size)."""
        if self.kind == "gguf":
            return (Path(self.folder) / self.gguf_file).stat().st_size
        total = 0
        for name in self.names():
            if self._tensors:
                t = self._tensors[name]
                total += t.numel() * t.element_size()
            else:
                begin, end = self._headers[name]["data_offsets"]
                total += end - begin
        return total


def _load_config(folder: Path):
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise SourceError(f"{folder}: no config.json; point at a Hugging Face model folder, a Hub id or a .gguf file")
    try:
        return AutoConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, OSError) as exc:
        raise SourceError(f"{folder / 'config.json'}: transformers cannot read it ({str(exc).splitlines()[0]})") from None


def _index_safetensors(folder: Path) -> tuple[dict[str, Path], dict[str, dict], dict[Path, int]]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise SourceError(f"{index}: not a valid safetensors index (no weight_map); re-download the checkpoint") from None
        shard_files = sorted(set(weight_map.values()))
        for shard in shard_files:
            if not (folder / shard).exists():
                raise SourceError(f"{index}: points at shard '{shard}', which is missing; re-download the checkpoint")
    else:
        shard_files = sorted(p.name for p in folder.glob("*.safetensors"))
    files, headers, data_start = {}, {}, {}
    for shard in shard_files:
        path = folder / shard
        header, data_start[path] = read_safetensors_header(path)
        header.pop("__metadata__", None)
        for name, info in header.items():
            files[name] = path
            headers[name] = info
    return files, headers, data_start


def _load_pickles(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.bin")):
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises UnpicklingError / RuntimeError for unsafe or corrupt files
            raise SourceError(f"{path}: cannot load safely with weights_only=True ({str(exc).splitlines()[0]})") from None
        tensors.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return tensors


def hub_unreachable(repo_id: str) -> SourceError:
    """The error for a Hub model that is neither reachable nor in the local cache."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else "the Hub cannot be reached and it is not in the cache"
    return SourceError(f"cannot get Hub model '{repo_id}': {why}; download it once online or pass a local folder")


def _hub_snapshot(repo_id: str, revision: str | None, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError:
        raise SourceError(f"Hub model '{repo_id}' has no revision '{revision}'; check --revision") from None
    except GatedRepoError:
        raise SourceError(f"Hub model '{repo_id}' is gated: accept its licence on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise SourceError(f"'{repo_id}' is neither a local path nor a Hub model that exists (or you lack access)") from None
    except LocalEntryNotFoundError:
        raise hub_unreachable(repo_id) from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot get Hub model '{repo_id}': {str(exc).splitlines()[0]}") from None


def _load_gguf_model(path: Path, dtype: torch.dtype = torch.float32, model_class=None, **model_kwargs):
    """transformers' GGUF loader dequantizes the file into an ordinary model."""
    try:
        import gguf  # noqa: F401 - transformers' GGUF loader needs it
    except ImportError:
        raise SourceError(f"{path}: reading GGUF needs the gguf package: pip install 'bitconv[gguf]'") from None
    from transformers import AutoModelForCausalLM

    cls = model_class or AutoModelForCausalLM
    try:
        model = cls.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **model_kwargs).eval()
    except Exception as exc:  # the GGUF loader raises many types for unsupported or corrupt files
        raise SourceError(f"{path}: transformers cannot load this GGUF file ({str(exc).splitlines()[0]})") from None
    _forget_gguf_quantization(model)
    return model


def _forget_gguf_quantization(model) -> None:
    """transformers dequantizes a GGUF into float weights but keeps the model marked as quantized, which stops
    `save_pretrained` and training; the weights are ordinary floats, so drop the marks."""
    for attr, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if attr in vars(model):
            setattr(model, attr, value)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


def _open_gguf(path: Path) -> Source:
    model = _load_gguf_model(path)
    # a GGUF-derived config names no architecture; record the class that loaded it so load() rebuilds the same
    model.config.architectures = [type(model).__name__]
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr in seen:  # tied weights (lm_head = embed_tokens) are stored once, as save_pretrained does
            continue
        seen.add(ptr)
        tensors[name] = tensor
    src = Source(spec=str(path), kind="gguf", folder=path.parent, config=model.config, gguf_file=path.name)
    src._tensors = tensors
    return src


def open_source(spec: str | os.PathLike, revision: str | None = None, allow_pickle: bool = False) -> Source:
    """Open a checkpoint given as a local folder, a .gguf file or a Hub id."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _open_gguf(path)
    if path.is_file():
        raise SourceError(f"{path}: a file that is not .gguf; pass the model folder that contains it")
    if path.is_dir():
        folder, kind = path, "folder"
    elif is_repo_id(text):
        folder, kind = _hub_snapshot(text, revision, allow_pickle), "hub"
    else:
        raise SourceError(f"'{text}' does not exist (not a folder, a .gguf file or a Hub id)")
    config = _load_config(folder)
    src = Source(spec=text, kind=kind, folder=folder, config=config,
                 revision=folder.name if kind == "hub" else revision)
    files, headers, data_start = _index_safetensors(folder)
    if files:
        src._files, src._headers, src._data_start = files, headers, data_start
    elif list(folder.glob("*.bin")):
        if not allow_pickle:
            raise SourceError(
                f"{folder}: only pickle .bin weights; convert them to safetensors, or pass --allow-pickle "
                "(loaded with weights_only=True)"
            )
        src._tensors = _load_pickles(folder)
    else:
        raise SourceError(f"{folder}: no .safetensors weights found")
    return src


def model_class_for(config, default: str = "AutoModel"):
    """The transformers class named in config.architectures, else the given Auto class."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return getattr(transformers, default)


def resolve_name(name: str, known: set[str], prefix: str) -> str | None:
    """Match a checkpoint tensor name to a model parameter name (checkpoints may lack or carry the base prefix)."""
    candidates = [name]
    if prefix:
        candidates += [f"{prefix}.{name}", name[len(prefix) + 1:] if name.startswith(prefix + ".") else None]
    for cand in candidates:
        if cand and cand in known:
            return cand
    return None


def module_kinds(config) -> tuple[dict[str, str], str]:
    """Map each parameter name of the model built from `config` to its module kind, built on the meta device.

    Kinds: "linear", "conv1d" (GPT-2's transposed Conv1D), "embedding", "other". Returns (kinds, base prefix).
    """
    from bitconv.quantize.kinds import module_kind

    cls = model_class_for(config)
    try:
        with torch.device("meta"):
            model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    except Exception:  # an architecture transformers cannot build: fall back to name rules alone
        return {}, ""
    kinds = {}
    for mod_name, module in model.named_modules():
        kind = module_kind(module)
        for pname, _ in module.named_parameters(recurse=False):
            kinds[f"{mod_name}.{pname}" if mod_name else pname] = kind
    return kinds, getattr(model, "base_model_prefix", "") or ""


def load_original(spec: str | os.PathLike, revision: str | None = None, dtype: torch.dtype = torch.float32,
                  model_class=None, **model_kwargs):
    """An original (unconverted) checkpoint as a transformers model in eval mode.

    `model_class` picks the head (e.g. AutoModelForSequenceClassification, which adds a new classifier to a
    plain encoder); `model_kwargs` go to its `from_pretrained` (num_labels, id2label, ...).
    """
    path = Path(str(spec)).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf_model(path, dtype, model_class, **model_kwargs)
    src = open_source(spec, revision=revision)
    cls = model_class or model_class_for(src.config)
    try:
        return cls.from_pretrained(str(src.folder), dtype=dtype, **model_kwargs).eval()
    except Exception as exc:  # transformers raises many types for mismatched checkpoints
        raise SourceError(f"{src.folder}: transformers cannot load it as {cls.__name__} ({str(exc).splitlines()[0]})") from None


def load_tokenizer(spec: str | os.PathLike):
    from transformers import AutoTokenizer

    path = Path(str(spec)).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if not path.exists():
            path = open_source(spec).folder
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{spec}: no usable tokenizer ({str(exc).splitlines()[0]})") from None


def load_image_processor(spec: str | os.PathLike):
    """The image processor (resizing, normalisation: preprocessor_config.json) of an image model's folder."""
    from transformers import AutoImageProcessor

    path = Path(str(spec)).expanduser()
    try:
        if not path.exists():
            path = open_source(spec).folder
        return AutoImageProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{spec}: no usable image processor ({str(exc).splitlines()[0]}); an image model's folder "
                          "needs the preprocessor_config.json it was trained with") from None
