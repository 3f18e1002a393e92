"""The model card (README.md) that `bitconv push` uploads with a converted folder.

Everything in it is computed from the folder: the options in config.json's quantization_config, the bytes
of every stored tensor by category (from the safetensors headers), the license and base model carried from
the source, and the accuracy table of a `bitconv report` JSON when one is given or found in the folder.
The card is built in memory; the user's folder is never written to.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from bitconv.display import human_bytes
from bitconv.errors import FormatError
from bitconv.format.safetensors import open_regular
from bitconv.format.summary import summarize
from bitconv.format.vocab import BITS_TO_SCHEME, FORMAT_NAME, FORMAT_VERSION
from bitconv.hub.ids import is_repo_id

# report files looked for in the folder when no --report is given, in this order
REPORT_NAMES = ("report.json", "bitconv-report.json", "bitconv_report.json", "eval.json", "evaluation.json")
SCHEME_TAGS = {
    "ternary": ["ternary", "1.58-bit", "bitnet"], "binary": ["binary", "1-bit"], "int8": ["int8", "8-bit"],
    "uint4": ["4-bit"], "uint2": ["2-bit"], "fp16": ["fp16"],
}
PIPELINE_BY_ARCH_SUFFIX = {
    "ForCausalLM": "text-generation", "LMHeadModel": "text-generation",
    "ForSequenceClassification": "text-classification", "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering", "ForMaskedLM": "fill-mask",
    "ForImageClassification": "image-classification",
}
# architectures the GGUF and plain-transformers exports handle (bitconv/gguf_export.py, bitconv/hf_bitnet_export.py)
GGUF_MODEL_TYPES = ("llama", "gpt2")
HF_BITNET_MODEL_TYPES = ("llama",)


# ---------------------------------------------------------------------------------------------------------
# what the card says about the source


def front_matter(text: str) -> dict:
    """The YAML front matter of a README, {} when there is none or it does not parse."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def license_of_card(readme: Path) -> str | None:
    """The `license:` of a model card's front matter; None when the file is missing, not a regular file of at
    most 1 MB (a card, not a hanging FIFO or a huge file), or names none."""
    limit = 1 << 20
    try:
        with open_regular(readme) as fh:
            raw = fh.read(limit + 1)
    except (FormatError, OSError):
        return None
    if len(raw) > limit:
        return None
    meta = front_matter(raw.decode("utf-8", errors="replace"))
    return meta["license"] if isinstance(meta.get("license"), str) else None


def source_license(folder: Path, config: dict) -> tuple[str | None, str]:
    """(license, where it came from): the folder's README (convert records the source card's license there), else
    config.json. Only the folder itself is read: the source recorded in its config is not a path to trust."""
    license_id = license_of_card(folder / "README.md")
    if license_id:
        return license_id, "the source model card (README.md)"
    if isinstance(config.get("license"), str):
        return config["license"], "config.json"
    return None, ""


def hub_base_model(qc: dict) -> str | None:
    """The source as a Hub id, or None when it was a local folder or a GGUF file.

    convert records a Hub source with the commit it resolved (source_revision) and a local folder by its
    name only, without a revision; a bare name like "gpt2" is therefore a Hub id only when a revision is there.
    """
    source = qc.get("source")
    if not source or not qc.get("source_revision") or source.endswith(".gguf"):
        return None
    return source if is_repo_id(source) else None


# ---------------------------------------------------------------------------------------------------------
# the accuracy table


def find_report(folder: Path) -> Path | None:
    for name in REPORT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.glob("*report*.json") if p.is_file())
    return found[0] if found else None


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_report(report: Path):
    try:
        return json.loads(report.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{report}: cannot read the report JSON ({exc}); pass the file written by `bitconv report --json`") from None


def report_rows(data) -> list[dict] | None:
    """The rows of a generic results JSON: a list of objects, under 'rows'/'results'/'models'/'runs', or {name: {...}}."""
    rows = None
    if isinstance(data, list):
        rows = data
    elif isinstance(data, dict):
        for key in ("rows", "results", "models", "runs"):
            if isinstance(data.get(key), list):
                rows = data[key]
                break
        else:
            if data and all(isinstance(v, dict) for v in data.values()):
                rows = [{"model": name, **value} for name, value in data.items()]
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return [_flatten(r) for r in rows]


def _bitconv_report_section(data: dict, report: Path) -> str:
    """The accuracy table of a `bitconv report --json` file (schema bitconv.report): one row per run."""
    metric = data.get("metric") or "metric"
    header = ["model", metric, "vs baseline", "verdict", "file bytes", "bits/weight", "ms/token"]
    rows = [[r.get("label") or r.get("name"), r.get("metric"), r.get("metric_vs_baseline"),
             r.get("verdict") or r.get("status"), r.get("file_bytes"), r.get("bits_per_weight_overall"),
             r.get("latency_ms_per_token")] for r in data.get("runs") or []]
    intro = f"From `bitconv report` (`{report.name}`): {data.get('title') or 'results'}; task {data.get('task')}"
    if data.get("baseline"):
        intro += f", baseline {data['baseline']}"
    return intro + ".\n\n" + markdown_table(header, rows)


def report_section(report: Path) -> str:
    """Markdown for the card's accuracy section from a report JSON (bitconv's own, or any table of results)."""
    from bitconv.report.build import REPORT_SCHEMA

    data = _read_report(report)
    if isinstance(data, dict) and data.get("schema") == REPORT_SCHEMA and isinstance(data.get("runs"), list) and data["runs"]:
        return _bitconv_report_section(data, report)
    rows = report_rows(data)
    if rows is None:
        raise FormatError(
            f"{report}: no table of results in it (expected `bitconv report --json` output, a list of objects, "
            "or one under 'rows' or 'results'); pass the JSON written by `bitconv report --json`"
        )
    return f"From the report `{report.name}`:\n\n" + report_table(rows)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return markdown_table(columns, [[row.get(c) for c in columns] for row in rows])


# ---------------------------------------------------------------------------------------------------------
# the card


def _yaml_front_matter(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip() + "\n---\n"


def _usage(repo_id: str, name: str, model_type: str | None, scheme: str, pipeline: str | None) -> str:
    parts = [
        "### bitconv",
        "",
        "With bitconv installed:",
        "",
        "```bash",
        f"hf download {repo_id} --local-dir {name}",
        "```",
        "",
        "```python",
        "import bitconv",
        f'model = bitconv.load("{name}")          # a transformers model with packed ternary layers',
        f'dense = bitconv.load("{name}", dequantize=True)   # or plain nn.Linear weights',
        "```",
        "",
        "### ONNX Runtime",
        "",
        "```bash",
        f"bitconv export ./{name} --onnx {name}.onnx   # see `bitconv export --help` for the custom-op and MatMulNBits targets",
        "```",
        "",
        "```python",
        "import onnxruntime as ort",
        f'session = ort.InferenceSession("{name}.onnx")  # the custom-op target needs bitconv\'s op library registered (bitconv.ort)',
        "```",
    ]
    if model_type in GGUF_MODEL_TYPES and scheme == "ternary":
        parts += [
            "",
            "### llama.cpp (GGUF)",
            "",
            "```bash",
            f"bitconv export ./{name} --gguf {name}-tq2_0.gguf --type tq2_0   # or tq1_0",
            f'llama-cli -m {name}-tq2_0.gguf -p "Hello"',
            "```",
            "",
            "Projections whose input width is not a multiple of 256 cannot be stored as TQ2_0/TQ1_0; the export",
            "writes them in a fallback type and lists them.",
        ]
    if model_type in HF_BITNET_MODEL_TYPES and scheme == "ternary" and pipeline == "text-generation":
        parts += [
            "",
            "### Plain transformers (BitNet layout)",
            "",
            "```bash",
            f"bitconv export ./{name} --hf-bitnet {name}-hf/",
            "```",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            f'model = AutoModelForCausalLM.from_pretrained("{name}-hf")   # quant_method "bitnet", no bitconv needed',
            "```",
        ]
    parts += [
        "",
        "### Any language",
        "",
        "The weights are ordinary safetensors; the packed layout is specified in bitconv's `formats/SPEC.md`, and",
        "`formats/reader_c/` has a dependency-free C reader (`bitconv-read model.safetensors TENSOR`).",
    ]
    return "\n".join(parts)


def build_model_card(folder: Path, repo_id: str, report: Path | None = None) -> tuple[str, Path | None]:
    """The README.md text for `folder` published as `repo_id`, and the report used (None when none)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    qc = config.get("quantization_config") or {}
    source = qc.get("source")
    scheme = BITS_TO_SCHEME.get(float(qc.get("bits", 1.58)), "ternary")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    pipeline = next((task for arch in architectures for suffix, task in PIPELINE_BY_ARCH_SUFFIX.items()
                     if arch.endswith(suffix)), None)
    license_id, license_from = source_license(folder, config)
    base_model = hub_base_model(qc)
    report = report or find_report(folder)
    accuracy = report_section(report) if report else None
    summary = summarize(folder)
    totals = summary.totals()
    name = repo_id.split("/")[-1]

    meta: dict = {}
    if base_model:
        meta["base_model"] = base_model
        meta["base_model_relation"] = "quantized"
    if license_id:
        meta["license"] = license_id
    meta["library_name"] = "bitconv"
    meta["tags"] = ["bitconv", *SCHEME_TAGS.get(scheme, []), "quantized", *([model_type] if model_type else [])]
    if pipeline:
        meta["pipeline_tag"] = pipeline

    origin = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else (
        f"a local checkpoint (`{Path(source).name}`)" if source else "an unrecorded source")
    bits_text = {"ternary": "ternary (1.58-bit, BitNet b1.58-style)", "binary": "binary (1-bit)",
                 "int8": "int8", "uint4": "4-bit", "uint2": "2-bit", "fp16": "fp16"}.get(scheme, scheme)
    lines = [
        _yaml_front_matter(meta),
        f"# {name}",
        "",
        f"{bits_text[0].upper()}{bits_text[1:]} weights of {origin}, converted and packed by "
        f"bitconv into its packed safetensors format (`{qc.get('format', 'bitconv-packed')}` "
        f"version {qc.get('format_version', '?')}).",
        "",
        "## How it was converted",
        "",
        "Every option of the conversion, as recorded in `config.json` → `quantization_config`:",
        "",
        markdown_table(["option", "value"], [[k, json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v]
                                             for k, v in qc.items()]),
        "",
        "## Size",
        "",
        "Bytes stored in the safetensors files, by category (computed from the files):",
        "",
    ]
    labels = {"linear": "projections in the repeated blocks", "embedding": "embeddings and lm_head",
              "other": "other (norms, biases, heads)"}
    size_rows = [[labels.get(c, c), t["n_params"], t["n_bytes"], human_bytes(t["n_bytes"])]
                 for c, t in sorted(totals.items())]
    n_params = sum(t["n_params"] for t in totals.values())
    n_bytes = sum(t["n_bytes"] for t in totals.values())
    size_rows.append(["**total**", n_params, n_bytes, human_bytes(n_bytes)])
    lines.append(markdown_table(["category", "parameters", "bytes", "size"], size_rows))
    lines += ["", f"{summary.n_quantized} tensors are quantized; `bitconv inspect` lists them."]
    if n_bytes:
        lines += ["", f"The same parameters in fp16 would take {human_bytes(2 * n_params)}: this folder is "
                      f"{2 * n_params / n_bytes:.2f}x smaller."]
    lines += ["", "## Accuracy", ""]
    if accuracy:
        lines.append(accuracy)
    else:
        lines += [
            "No evaluation report was given when this model was pushed (`bitconv push --report report.json`), so its",
            "accuracy is not stated here. Ternary conversion without recovery training (`bitconv recover`) usually",
            "costs a lot of accuracy: measure it with `bitconv eval` before relying on this model.",
        ]
    lines += ["", "## Usage", "", _usage(repo_id, name, model_type, scheme, pipeline), "", "## License", ""]
    if license_id:
        lines.append(f"`{license_id}`, carried over from {license_from}.")
    else:
        lines.append("The source's license was not found in the folder: check the base model's license before use.")
    return "\n".join(lines) + "\n", report


def conversion_card(title: str, source_label: str, revision: str | None, options: dict, totals: dict,
                    license_id: str | None = None) -> str:
    """The README.md that `convert` writes into every output folder (`push` writes a fuller one for the Hub); the
    source card's license, when it has one, goes into the front matter, where `push` finds it."""
    lines = ["---", yaml.safe_dump({"license": license_id}).strip(), "---", ""] if license_id else []
    lines += [f"# {title} converted by bitconv", "",
             f"Source: `{source_label}`" + (f" (revision `{revision}`)" if revision else ""),
             f"Format: {FORMAT_NAME} version {FORMAT_VERSION} (see bitconv's formats/SPEC.md)", "",
             "| category | parameters | bytes |", "|---|---|---|"]
    for category, t in sorted(totals.items()):
        lines.append(f"| {category} | {t['n_params']:,} | {t['n_bytes']:,} |")
    lines += ["", "Options:", "", "```json", json.dumps(options, indent=2, sort_keys=True), "```", "",
              "Naive post-training ternarization of a pretrained model usually destroys its accuracy: "
              "measure it with `bitconv eval` and recover it with `bitconv recover`.", ""]
    return "\n".join(lines)


def recovery_card(source_name: str, distilled: bool, metrics: dict) -> str:
    """The section `recover` appends to the converted folder's README.md: what the model scored before and after
    recovery training (every --eval set of a language model: the first is the headline)."""
    from bitconv.evaluate.results import headline

    lines = ["", "## Recovered by `bitconv recover`", "",
             f"Trained from `{source_name}` with straight-through quantization-aware training"
             + (" and distillation from the full-precision teacher" if distilled else "") + ".", "",
             "| model | result |", "|---|---|"]
    for key, label in (("original", "original (fp)"), ("teacher", "fp teacher"), ("before", "quantized, before training"),
                       ("after", "quantized, after training"), ("converted", "this folder")):
        if key in metrics:
            lines.append(f"| {label} | {headline(metrics[key])} |")
    lines += ["", "Recipe and full metrics: `recovery.json`.", ""]
    return "\n".join(lines)
