"""Quality measurements: perplexity (sliding windows), classification metrics, zero-shot classification.

Every task talks to the model only through `Backend.logits` (bitconv.backends), so the same model gives the
same numbers however it was loaded. Results are plain dicts that go into the result file (bitconv.results).

Perplexity follows the standard Hugging Face sliding-window method: windows of `context` tokens that start
every `stride` tokens; each window scores only the tokens no earlier window scored, with the rest of the
window as context. Windows start `stride` tokens apart (at most `context - 1`, so each window's first new
token has context). Every token of the evaluated sequence but the first (which has no context) is scored
exactly once, and the counts are exact: `n_scored_tokens = n_tokens - 1`; bits per byte divides by the UTF-8
bytes of exactly the text those scored tokens cover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bitconv.data.files import Examples, TextSlice, label_ids
from bitconv.data.images import ImageExamples
from bitconv.display import task_progress
from bitconv.errors import DataError, InternalError
from bitconv.evaluate.backends import CAUSAL_LM, IMAGE_CLASSIFICATION, SEQUENCE_CLASSIFICATION, Backend

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------------
# perplexity


@dataclass
class TokenizedText:
    ids: list[int]
    text: str  # exactly the text the ids cover
    scored_text: str  # the text of ids[1:], whose tokens are scored


def _encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: no length warnings, no special tokens
        enc = backend.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> TokenizedText:
    """Token ids of `text` (no special tokens added), cut to `max_tokens`, with the text they cover.

    With `max_tokens`, only a prefix of the text is tokenized (grown until it yields enough tokens, cut at a
    line end); tokens far from a cut do not depend on where the cut is, and a margin keeps the kept ones far.
    """
    margin = 64
    chars = len(text) if max_tokens is None else min(len(text), 8 * (max_tokens + margin))
    while True:
        cut = len(text) if chars >= len(text) else (text.find("\n", chars) + 1 or len(text))
        ids, offsets = _encode_with_offsets(tokenizer, text[:cut])
        if max_tokens is None or cut >= len(text) or len(ids) >= max_tokens + margin:
            break
        chars *= 2
    if max_tokens is not None and len(ids) > max_tokens:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    if len(ids) < 2:
        raise DataError(f"the text gives {len(ids)} token(s); perplexity needs at least 2")
    end = max(e for _, e in offsets)
    return TokenizedText(ids, text[:end], text[offsets[0][1]:end])


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a sequence of n_tokens.

    Window tokens [begin, end) go in; positions [first_scored, end) are scored (position 0 never is).
    Windows start `stride` tokens apart, but at most `context - 1`: consecutive windows then share at least
    one token, so the first new token of a window has context and every token after the first is scored.
    """
    windows, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + context, n_tokens)
        windows.append((begin, end, max(prev_end, 1)))
        prev_end = end
        if end == n_tokens:
            return windows
        begin = min(begin + stride, end - 1)


def check_context(backend: Backend, context: int, what: str = "--context") -> None:
    limit = backend.max_positions
    if context < 2:
        raise DataError(f"{what} {context}: must be at least 2 tokens")
    if limit is not None and context > limit:
        raise DataError(f"{what} {context} is longer than the model's maximum of {limit} positions "
                           f"({backend.source}, config.json); pass {what} {limit} or less")


def perplexity(backend: Backend, data: TextSlice, context: int = 512, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 1, progress: bool = True) -> dict:
    """Perplexity and bits per byte of a causal LM over a text slice (see the module docstring)."""
    if backend.kind != CAUSAL_LM:
        raise DataError(f"{backend.source}: perplexity needs a causal language model, this is a "
                           f"{backend.architecture}; use --task classify for classifiers")
    check_context(backend, context)
    stride = stride or context
    if not 1 <= stride <= context:
        raise DataError(f"--stride {stride}: must be between 1 and --context ({context})")
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"--max-tokens {max_tokens}: must be at least 2")
    tok = tokenize_text(backend.tokenizer, data.text, max_tokens)
    ids = torch.tensor(tok.ids, dtype=torch.long)
    windows = sliding_windows(len(ids), context, stride)
    nll_nats = 0.0
    n_scored = 0
    # full windows share one length, so they batch; the last (shorter) window goes alone
    groups: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and (w[1] - w[0]) == (groups[-1][0][1] - groups[-1][0][0]):
            groups[-1].append(w)
        else:
            groups.append([w])
    with task_progress("perplexity", total=len(windows), enabled=progress) as advance:
        for group in groups:
            batch = torch.stack([ids[b:e] for b, e, _ in group])
            logits = backend.logits(batch)
            for row, (b, e, first) in enumerate(group):
                # logits at position p predict token p + 1
                pred = logits[row, first - b - 1:e - b - 1]
                target = ids[first:e].to(pred.device)
                nll_nats += F.cross_entropy(pred, target, reduction="sum").double().item()
                n_scored += e - first
                advance(f"{n_scored} tokens")
    if n_scored != len(ids) - 1:
        raise InternalError(f"scored {n_scored} tokens of {len(ids)}")
    n_bytes = len(tok.scored_text.encode("utf-8"))
    mean_nll = nll_nats / n_scored
    return {
        "perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf,  # inf/nan are written as null
        "mean_nll_nats": mean_nll,
        "bits_per_token": mean_nll / LN2,
        "bits_per_byte": nll_nats / LN2 / n_bytes,
        "total_nll_nats": nll_nats,
        "n_tokens": len(ids),
        "n_scored_tokens": n_scored,
        "n_scored_bytes": n_bytes,
        "n_windows": len(windows),
        "context": context,
        "stride": stride,
        "effective_stride": min(stride, context - 1),
        "evaluated_chars": [data.start_char, data.start_char + len(tok.text)],
    }


# ---------------------------------------------------------------------------------------------------------
# classification


def classification_metrics(y_true: list[int], y_pred: list[int], class_names: dict[int, str]) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix (rows true, columns predicted).

    Macro averages are over every class of the model; a class never predicted has precision 0, one absent from
    the data has recall 0 and is listed with support 0.
    """
    classes = sorted(class_names)
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    for t, p in zip(y_true, y_pred):
        matrix[index[t]][index[p]] += 1
    per_class = {}
    for c in classes:
        i = index[c]
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[class_names[c]] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(y_true)
    majority = max(sum(row) for row in matrix) / n if n else 0.0
    return {
        "accuracy": sum(matrix[i][i] for i in range(len(classes))) / n if n else 0.0,
        "macro_precision": sum(v["precision"] for v in per_class.values()) / len(classes),
        "macro_recall": sum(v["recall"] for v in per_class.values()) / len(classes),
        "macro_f1": sum(v["f1"] for v in per_class.values()) / len(classes),
        "per_class": per_class,
        "confusion_matrix": {"labels": [class_names[c] for c in classes], "rows_true_columns_predicted": matrix},
        "majority_class_rate": majority,
        "n_examples": n,
    }


def max_input_length(backend: Backend) -> int:
    limits = [backend.max_positions or 512, getattr(backend.tokenizer, "model_max_length", None) or 512]
    return min(x for x in limits if x > 0)


def _model_labels(backend: Backend, kind: str, what: str) -> dict[int, str]:
    if backend.kind != kind:
        hint = " pass --labels and --template for zero-shot classification" if backend.kind == CAUSAL_LM else ""
        raise DataError(f"{backend.source}: a {backend.architecture} is not {what} model;{hint}")
    id2label = backend.id2label()
    if not id2label:
        raise DataError(f"{backend.source}: config.json has no id2label; pass --label-map NAME=ID,...")
    return id2label


def _predict(backend: Backend, batches: list[list[int]], inputs, id2label: dict[int, str], n: int,
             progress: bool) -> list[int]:
    """The class id predicted for each of n examples; `inputs(batch)` gives a batch's (inputs, mask)."""
    y_pred = [0] * n
    with task_progress("classify", total=len(batches), enabled=progress) as advance:
        for batch in batches:
            logits = backend.logits(*inputs(batch))
            if logits.shape[-1] != len(id2label):
                raise DataError(f"{backend.source}: the model gives {logits.shape[-1]} scores, config.json names "
                                   f"{len(id2label)} labels")
            for i, p in zip(batch, logits.argmax(-1).tolist()):
                y_pred[i] = sorted(id2label)[p]
            advance()
    return y_pred


def classify(backend: Backend, examples: Examples, label_map: dict[str, int] | None = None,
             batch_size: int = 32, progress: bool = True) -> dict:
    """Predictions of a sequence-classification model against the labels of `examples`."""
    id2label = _model_labels(backend, SEQUENCE_CLASSIFICATION, "a sequence-classification")
    y_true = label_ids(examples.labels, id2label, label_map, examples.path)
    tokenizer = backend.tokenizer
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2 style tokenizers have no pad token; batches are padded with EOS, masked out by attention_mask
        tokenizer.pad_token = tokenizer.eos_token
    if backend.module is not None and getattr(backend.config, "pad_token_id", None) is None:
        # sequence classifiers over causal models find each row's last token through pad_token_id
        backend.config.pad_token_id = tokenizer.pad_token_id
    max_length = max_input_length(backend)
    # longest first, so each batch pads little and the order (hence the result) is fixed
    order = sorted(range(len(examples.texts)), key=lambda i: (-len(examples.texts[i]), i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def inputs(batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer([examples.texts[i] for i in batch], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    y_pred = _predict(backend, batches, inputs, id2label, len(order), progress)
    return {"mode": "sequence-classification", **classification_metrics(y_true, y_pred, id2label)}


def pixel_values(backend: Backend, examples: ImageExamples, indices: list[int]) -> torch.Tensor:
    """The model's inputs for some images: its image processor's resizing and normalisation."""
    images = [examples.image(i) for i in indices]
    return backend.image_processor(images=images, return_tensors="pt")["pixel_values"]


def classify_images(backend: Backend, examples: ImageExamples, label_map: dict[str, int] | None = None,
                    batch_size: int = 32, progress: bool = True) -> dict:
    """Predictions of an image-classification model against the labels of `examples`."""
    id2label = _model_labels(backend, IMAGE_CLASSIFICATION, "an image-classification")
    y_true = label_ids(examples.labels, id2label, label_map, examples.path)
    order = list(range(len(examples)))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    y_pred = _predict(backend, batches, lambda batch: (pixel_values(backend, examples, batch), None), id2label,
                      len(order), progress)
    return {"mode": "image-classification", **classification_metrics(y_true, y_pred, id2label)}


def zero_shot(backend: Backend, examples: Examples, labels: list[str], template: str,
              label_map: dict[str, int] | None = None, progress: bool = True) -> dict:
    """Zero-shot classification with a causal LM: the label word with the highest log-probability wins.

    The prompt is `template` with `{text}` replaced; each label is scored as the continuation " label" (no
    space added when the prompt already ends in whitespace): the sum of its tokens' log-probabilities.
    """
    if backend.kind != CAUSAL_LM:
        raise DataError(f"{backend.source}: zero-shot classification (--labels) needs a causal language model, "
                           f"this is a {backend.architecture}")
    labels = [x.strip() for x in labels if x.strip()]
    if len(labels) < 2:
        raise DataError("--labels needs at least two comma-separated label words, e.g. negative,positive")
    if "{text}" not in template:
        raise DataError(f"--template {template!r} has no {{text}} placeholder")
    id2label = dict(enumerate(labels))
    y_true = label_ids(examples.labels, id2label, label_map, examples.path, what="--labels")
    tokenizer = backend.tokenizer
    limit = max_input_length(backend)
    y_pred = []
    with task_progress("zero-shot", total=len(examples.texts), enabled=progress) as advance:
        for text in examples.texts:
            prompt = template.replace("{text}", text)
            sep = "" if prompt[-1:].isspace() else " "
            ctx = _encode_with_offsets(tokenizer, prompt)[0]
            conts = [_encode_with_offsets(tokenizer, sep + label)[0] for label in labels]
            longest = max(len(c) for c in conts)
            ctx = ctx[-(limit - longest):]  # keep the end of an over-long prompt
            seqs = [ctx + c for c in conts]
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            logprobs = torch.log_softmax(backend.logits(ids, mask), dim=-1)
            scores = []
            for r, c in enumerate(conts):
                positions = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c))
                scores.append(logprobs[r, positions, torch.tensor(c)].sum().item())
            y_pred.append(max(range(len(labels)), key=lambda i: (scores[i], -i)))
            advance()
    return {"mode": "zero-shot", "labels": labels, "template": template,
            **classification_metrics(y_true, y_pred, id2label)}
