"""`compare`: convert one checkpoint with several schemes and evaluate each, one result file per run.

    out/
      bits-16-fp16.json, bits-8-int8.json, ...   one result (bitconv.results schema) per scheme
      models/bits-16-fp16/, ...                   the converted folders (deleted with keep_models=False)

Each evaluation runs in a fresh process by default, so its peak memory is its own and a crash (out of
memory, a segfault in a native library) fails that run only. A run that fails, in conversion or evaluation,
is recorded with status "failed" and its error; the other runs still complete.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
import traceback
from pathlib import Path

from bitconv.errors import BitconvError, OptionError
from bitconv.evaluate.results import failed_result, read_result, write_result
from bitconv.evaluate.run import EvalConfig
from bitconv.format.vocab import BITS_TO_SCHEME
from bitconv.quantize.config import QuantConfig, parse_bits

# QuantConfig.for_bits keywords that apply to every width of a comparison (bits itself varies)
CONVERT_OPTIONS = ("granularity", "scale_method", "packing", "keep_outliers", "embeddings", "activations", "keep", "only")


def run_name(bits: float) -> str:
    text = f"{bits:g}"
    return f"bits-{text}-{BITS_TO_SCHEME[bits]}"


def parse_bits_list(text: str) -> list[float]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise OptionError("--bits needs a comma-separated list, e.g. 16,8,4,2,1.58,1")
    bits = [parse_bits(t) for t in items]
    if len(set(bits)) != len(bits):
        raise OptionError(f"--bits {text}: a scheme is listed twice")
    return bits


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, BitconvError):
        return str(exc)
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _evaluate_to_file(model: str, config: EvalConfig, name: str, path: str, progress: bool) -> None:
    """Evaluate and write the result file; a failure is written as a failed result. Runs in the child process."""
    from bitconv.evaluate.run import evaluate_model

    try:
        result = evaluate_model(model, config, name=name, progress=progress)
    except Exception as exc:  # any failure belongs to this run: record it, let the other runs go on
        if not isinstance(exc, BitconvError):
            traceback.print_exc()
        result = failed_result(name, {"source": model}, {"name": config.task, "data": config.data}, _error_line(exc))
    write_result(path, result)


def _evaluate_isolated(model: str, config: EvalConfig, name: str, path: Path, progress: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=_evaluate_to_file, args=(model, config, name, str(path), progress))
    process.start()
    process.join()
    if process.exitcode != 0 and not path.exists():
        why = f"killed by signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
        if process.exitcode == -9:
            why += " (out of memory?)"
        write_result(path, failed_result(name, {"source": model}, {"name": config.task, "data": config.data},
                                         f"the evaluation process died ({why})"))


def compare(source: str, out: str | Path, bits: list[float] | str = "16,8,4,2,1.58,1", *, eval_config: EvalConfig,
            convert_options: dict | None = None, isolate: bool = True, keep_models: bool = True, progress: bool = True,
            log=print) -> list[dict]:
    """Convert `source` with each of `bits` and evaluate every width with `eval_config`; one summary row per run.

    Results are written to `out/<run>.json`. `convert_options` are QuantConfig.for_bits keywords shared by every
    width (granularity, scale_method, ...).
    """
    from bitconv.evaluate.cost import quantization_errors
    from bitconv.evaluate.run import check_inputs
    from bitconv.quantize.convert import convert
    from bitconv.quantize.source import open_source

    bits_list = parse_bits_list(bits) if isinstance(bits, str) else [parse_bits(b) for b in bits]
    convert_options = dict(convert_options or {})
    unknown = set(convert_options) - set(CONVERT_OPTIONS)
    if unknown:
        raise OptionError(f"unknown conversion options {sorted(unknown)}; use {', '.join(CONVERT_OPTIONS)}")
    # every width's QuantConfig is built (and so checked) before anything is converted
    configs = {b: QuantConfig.for_bits(b, **convert_options) for b in bits_list}
    ec = eval_config
    task, data = ec.task, ec.data
    check_inputs(ec)  # a typo in the data or device should not cost six conversions
    out = Path(out).expanduser()
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    src = None
    rows = []
    for b in bits_list:
        name = run_name(b)
        result_path = out / f"{name}.json"
        folder = models / name
        run_info = {"source": str(source), "bits": b, "scheme": BITS_TO_SCHEME[b], "convert_options": convert_options,
                    "model_folder": str(folder)}
        log(f"[{name}] converting {source} ...")
        start = time.perf_counter()
        try:
            convert(source, folder, configs[b], force=True, progress=progress)
            run_info["convert_seconds"] = time.perf_counter() - start
            if src is None:
                src = open_source(source)
            errors = quantization_errors(src, folder)
        except Exception as exc:  # a failed conversion fails this run only
            if not isinstance(exc, BitconvError):
                traceback.print_exc()
            result = failed_result(name, {"source": str(source)}, {"name": task, "data": str(data)},
                                   f"conversion failed: {_error_line(exc)}")
            result["run"] = run_info
            write_result(result_path, result)
            rows.append({"name": name, "status": "failed", "error": result["error"], "path": str(result_path)})
            log(f"[{name}] failed: {result['error']}")
            continue
        log(f"[{name}] evaluating ...")
        result_path.unlink(missing_ok=True)
        if isolate:
            _evaluate_isolated(str(folder), ec, name, result_path, progress)
        else:
            _evaluate_to_file(str(folder), ec, name, str(result_path), progress)
        result = read_result(result_path)
        result["run"] = run_info
        result["quantization_error"] = errors
        write_result(result_path, result)
        if not keep_models:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append({"name": name, "status": result["status"], "error": result["error"], "path": str(result_path)})
        log(f"[{name}] {result['status']}" + (f": {result['error']}" if result["error"] else ""))
    if not keep_models:
        shutil.rmtree(models, ignore_errors=True)
    return rows
