"""The evaluation result file: one JSON object per run, versioned (docs/results-schema.md documents it).

`eval --json`, every run of `compare`, and `report` all use this one shape. Floats that are not finite (the
perplexity of a model whose logits overflow) are written as null: JSON has no Infinity or NaN.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

from bitconv.errors import FormatError
from bitconv.format.atomic import write_json_atomic

SCHEMA = "bitconv.eval-result"
SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")


def environment() -> dict:
    import torch
    import transformers

    import bitconv

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"bitconv": bitconv.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(), "cpu": cpu,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def new_result(name: str, model: dict, task: dict) -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": name, "status": "ok", "error": None,
            "model": model, "task": task, "run": None, "metrics": None, "cost": None, "quantization_error": None,
            "environment": environment(), "seconds": None}


def failed_result(name: str, model: dict, task: dict, error: str) -> dict:
    result = new_result(name, model, task)
    result.update(status="failed", error=error)
    return result


def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_result(path: str | Path, result: dict) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, json_safe(result))
    return path


def validate(result: dict, where: str) -> dict:
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise FormatError(f"{where}: not a bitconv result file (no \"schema\": \"{SCHEMA}\")")
    version = result.get("schema_version")
    if version != SCHEMA_VERSION:
        raise FormatError(f"{where}: result schema version {version}, this bitconv reads version {SCHEMA_VERSION}; "
                           "upgrade bitconv or re-run the evaluation")
    if result.get("status") not in STATUSES:
        raise FormatError(f"{where}: status {result.get('status')!r} is not one of {', '.join(STATUSES)}")
    for key in ("name", "model", "task"):
        if key not in result:
            raise FormatError(f"{where}: the result has no '{key}'; the file is damaged, re-run the evaluation")
    return result


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); re-run the evaluation") from None
    return validate(data, str(path))


def read_results(folder: str | Path) -> list[dict]:
    """Every result file directly inside `folder` (other JSON files there are skipped), sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FormatError(f"{folder}: no such results folder")
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise FormatError(f"{path}: not valid JSON; delete it or re-run the evaluation") from None
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            results.append(validate(data, str(path)))
    if not results:
        raise FormatError(f"{folder}: holds no bitconv result files (*.json from `bitconv eval --json` or `bitconv compare`)")
    return results


def headline(metrics: dict) -> str:
    """One line for a metrics dict of `perplexity` or `classify`: "perplexity 65.09", "accuracy 99.33%, spam F1 0.9748"
    (with two classes, the F1 of the rarer one, the class a detector is for)."""
    if "perplexity" in metrics:
        return f"perplexity {metrics['perplexity']:.2f}"
    text = f"accuracy {100 * metrics['accuracy']:.2f}%"
    per_class = metrics.get("per_class") or {}
    if len(per_class) == 2:
        rare = min(per_class, key=lambda name: (per_class[name]["support"], name))
        text += f", {rare} F1 {per_class[rare]['f1']:.4f}"
    return text
