"""Training checkpoints that load without running code: tensors in safetensors, everything else in JSON.

A checkpoint is the folder CKPT/state/ holding `state.json` (format version, the run's fingerprint, step,
tokens, the optimizer's hyper-parameters) and `tensors.safetensors` (model weights, optimizer moments and
the random generators' states). The folder is written beside its old self and renamed into place, so an
interrupted save leaves the previous checkpoint. Reading parses JSON first and compares the fingerprint
before any tensor is read; nothing in the files is ever executed (pickles, as older bitconv wrote in
state.pt, are refused without being opened).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bitconv.errors import TrainingError
from bitconv.format.atomic import staged_folder

CHECKPOINT_VERSION = 2
STATE_FOLDER = "state"
STATE_JSON = "state.json"
TENSORS = "tensors.safetensors"
LEGACY_PICKLE = "state.pt"  # bitconv's first checkpoints: a torch pickle, never loaded (it could run code)


def fingerprint(config: dict, source: str, data: dict, world: int) -> dict:
    """What a checkpoint is resumed under: the options, the source, the data's SHA-256s and the world size."""
    return {"config": config, "source": str(source), **data, "world_size": world,
            "checkpoint_version": CHECKPOINT_VERSION}


def differences(a: dict, b: dict) -> list[str]:
    """The keys (options for 'config') whose values differ between two fingerprints."""
    diff = []
    for key in sorted(set(a) | set(b)):
        if key == "config" and isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            diff += [k for k in sorted(set(a[key]) | set(b[key])) if a[key].get(k) != b[key].get(k)]
        elif a.get(key) != b.get(key):
            diff.append(key)
    return diff


def exists(ckpt_dir: Path) -> bool:
    return (ckpt_dir / STATE_FOLDER).exists() or (ckpt_dir / LEGACY_PICKLE).exists()


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            index, key = name[len("optimizer."):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(ckpt_dir: Path, fp: dict, step: int, tokens: int, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict, rng: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update(opt_tensors)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    # clones on the CPU: safetensors stores no shared storage (tied embeddings) and reads no device memory
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    meta = {"checkpoint_version": CHECKPOINT_VERSION, "fingerprint": fp, "step": step, "tokens": tokens,
            "optimizer": opt_meta}
    with staged_folder(ckpt_dir / STATE_FOLDER, option="--checkpoint-dir") as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_checkpoint(ckpt_dir: Path, expected: dict) -> dict:
    """{"step", "tokens", "model", "optimizer", "rng"} of the checkpoint in `ckpt_dir`, made under `expected`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (ckpt_dir / LEGACY_PICKLE).exists():
        raise TrainingError(f"{ckpt_dir / LEGACY_PICKLE}: a pickle checkpoint, which bitconv never loads (a pickle "
                            "can run code); delete it, or pass --force to start afresh")
    folder = ckpt_dir / STATE_FOLDER
    try:
        meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{folder / STATE_JSON}: cannot read the checkpoint ({type(exc).__name__}); delete "
                            f"{folder} or pass --force to start afresh") from None
    if not isinstance(meta, dict) or meta.get("checkpoint_version") != CHECKPOINT_VERSION:
        found = meta.get("checkpoint_version") if isinstance(meta, dict) else None
        raise TrainingError(f"{folder}: checkpoint format version {found!r}, this bitconv reads "
                            f"{CHECKPOINT_VERSION}; delete it or pass --force to start afresh")
    found = meta.get("fingerprint")
    if found != expected:
        diff = ", ".join(differences(expected, found if isinstance(found, dict) else {})) or "format"
        raise TrainingError(f"{folder}: checkpoint from a different configuration (differs in: {diff}); rerun with "
                            "the same options or use a new --checkpoint-dir")
    try:
        tensors = load_file(str(folder / TENSORS))
        optimizer = _unflatten_optimizer(tensors, meta["optimizer"])
        step, tokens = int(meta["step"]), int(meta["tokens"])
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise TrainingError(f"{folder / TENSORS}: cannot read the checkpoint ({type(exc).__name__}); delete "
                            f"{folder} or pass --force to start afresh") from None
    return {"step": step, "tokens": tokens, "optimizer": optimizer,
            "model": {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
            "rng": {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}}
