"""Reads Hugging Face checkpoints tensor by tensor: a Hub id, a local folder, or a GGUF file.

Safetensors sources are read lazily, one tensor at a time (memory-mapped), so a conversion never holds the
whole model. A GGUF file is dequantized by transformers' own GGUF loader (that needs the whole model, which
is fine for the small models GGUF sources are used for here). Pickle `.bin` checkpoints are read only when
asked, with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bitconv.errors import BitconvError, FormatError, SourceError
from bitconv.format.safetensors import open_regular, read_json_file, read_safetensors_header, read_weight_map
from bitconv.format.vocab import DTYPE_BY_ST, SIDE_FILES, torch_dtype
from bitconv.hub.ids import is_repo_id

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


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
        row = DTYPE_BY_ST.get(st)
        return row.name if row is not None else st.lower()

    def file_of(self, name: str) -> str:
        return str(self._files.get(name, self.gguf_file or self.folder))

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read with plain file reads: a memory map would keep every page read so far resident."""
        if self._tensors:
            return self._tensors[name]
        path = self._files[name]
        info = self._headers[name]
        dtype = torch_dtype(info["dtype"])
        if dtype is None:
            raise SourceError(f"{path}: tensor '{name}' has dtype {info['dtype']}, which bitconv cannot read")
        begin, end = info["data_offsets"]
        expected = int(np.prod(info["shape"], dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        if end - begin != expected:
            raise SourceError(f"{path}: tensor '{name}' has {end - begin} bytes for shape {info['shape']}; the file is corrupt")
        if expected == 0:
            return torch.empty(info["shape"], dtype=dtype)
        buf = bytearray(expected)
        with open_regular(path) as fh:
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


def load_config(folder: Path, error: type[BitconvError] = SourceError):
    """transformers' config of a model folder; a missing, hanging (FIFO) or unreadable config.json is `error`."""
    from transformers import AutoConfig

    if not os.path.lexists(folder / "config.json"):
        raise error(f"{folder}: no config.json; point at a Hugging Face model folder, a Hub id or a .gguf file")
    read_json_file(folder / "config.json", fix="fix the checkpoint's config.json")  # a FIFO must not hang transformers
    try:
        return AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises ValueError, KeyError, OSError, TypeError ... for bad configs
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{folder / 'config.json'}: transformers cannot read it ({reason})") from None


def _index_safetensors(folder: Path) -> tuple[dict[str, Path], dict[str, dict], dict[Path, int]]:
    index = folder / "model.safetensors.index.json"
    if os.path.lexists(index):
        shard_files = sorted(set(read_weight_map(index).values()))
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
    config = load_config(folder)
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


# what transformers names its model classes: LlamaForCausalLM, GPT2LMHeadModel, BertModel, T5EncoderModel, ...
MODEL_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*(Model|For[A-Z][A-Za-z0-9_]*)$")


def model_class_for(config, default: str = "AutoModel", error: type[BitconvError] = SourceError,
                    where: str = "config.json"):
    """The transformers class named in config.architectures, else the given Auto class.

    config.json is untrusted: a name is looked up only if it reads like a model class, and used only if it is a
    PreTrainedModel subclass, so `architectures` cannot make bitconv call any other attribute of transformers.
    """
    import transformers

    architectures = getattr(config, "architectures", None) or []
    if not isinstance(architectures, (list, tuple)):
        raise error(f"{where}: architectures is {architectures!r}, not a list of model class names; fix config.json")
    for arch in architectures:
        if not isinstance(arch, str) or not MODEL_CLASS_NAME.match(arch):
            raise error(f"{where}: architectures names {arch!r}, which is not a transformers model class "
                        "(e.g. LlamaForCausalLM); fix config.json")
        cls = getattr(transformers, arch, None)
        if cls is None:
            continue
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise error(f"{where}: architectures names {arch!r}, which is not a transformers model class; "
                        "fix config.json")
        return cls
    return getattr(transformers, default)


def check_model_shapes(cls, config, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Build `cls(config)` on the meta device (no memory) and compare each parameter with the stored weight's shape,
    so a config.json that disagrees with its weights is refused before a real model is allocated from it."""
    try:
        with torch.device("meta"):
            model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    except Exception as exc:  # transformers raises many types for configs it cannot build
        raise FormatError(f"{where}: transformers cannot build {cls.__name__} from config.json "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); fix config.json or "
                          "re-convert the model") from None
    params = dict(model.named_parameters())
    prefix = getattr(model, "base_model_prefix", "") or ""
    for name, shape in sorted(shapes.items()):
        target = resolve_name(name, set(params), prefix)
        if target is not None and tuple(params[target].shape) != tuple(shape):
            raise FormatError(f"{where}: tensor '{name}' is {list(shape)}, but config.json makes {cls.__name__}'s "
                              f"'{target}' {list(params[target].shape)}; the folder's config.json does not match its "
                              "weights: re-convert the model")


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


def check_side_files(folder: Path) -> None:
    """The tokenizer and generation files of a model folder are regular files: a FIFO would block the reader that
    opens it (transformers, a copy) forever."""
    for name in SIDE_FILES:
        path = Path(folder) / name
        if os.path.lexists(path) and not path.is_file():
            raise SourceError(f"{path}: not a regular file (a FIFO, a device or a folder); fix the model folder")


def load_tokenizer(spec: str | os.PathLike):
    from transformers import AutoTokenizer

    path = Path(str(spec)).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if not path.exists():
            path = open_source(spec).folder
        check_side_files(path)
        return AutoTokenizer.from_pretrained(str(path))
    except BitconvError:
        raise
    except Exception as exc:  # tokenizer files are untrusted: transformers raises KeyError, TypeError, ... on odd ones
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"{spec}: no usable tokenizer ({reason})") from None


def load_image_processor(spec: str | os.PathLike):
    """The image processor (resizing, normalisation: preprocessor_config.json) of an image model's folder."""
    from transformers import AutoImageProcessor

    path = Path(str(spec)).expanduser()
    try:
        if not path.exists():
            path = open_source(spec).folder
        return AutoImageProcessor.from_pretrained(str(path))
    except Exception as exc:  # preprocessor files are untrusted too: transformers raises many types on odd ones
        raise SourceError(f"{spec}: no usable image processor ({str(exc).splitlines()[0]}); an image model's folder "
                          "needs the preprocessor_config.json it was trained with") from None
