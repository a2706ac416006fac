#!/usr/bin/env bash
# The demo: generate data, train a tokenizer, pretrain and fine-tune a tiny MiniMind, ask it a question.
# Usage: bash examples/train_tiny.sh [OUT_DIR]   (default: out/demo; a previous run there is replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${1:-out/demo}
rm -rf "$OUT"
$PY examples/make_demo_data.py "$OUT/data"
$PY -m minimind_spec tokenizer train "$OUT/data/pretrain.jsonl" "$OUT/data/sft.jsonl" --vocab-size 512 --out "$OUT/tokenizer"
$PY -m minimind_spec train examples/demo/tiny.json --plan --pretrain-data "$OUT/data/pretrain.jsonl" \
    --sft-data "$OUT/data/sft.jsonl" --tokenizer "$OUT/tokenizer" --max-steps 400
$PY -m minimind_spec train examples/demo/tiny.json --pretrain-data "$OUT/data/pretrain.jsonl" --sft-data "$OUT/data/sft.jsonl" \
    --tokenizer "$OUT/tokenizer" --out "$OUT/run" --max-steps 400 --eval-every 100
echo "Q: what is three plus four?"
echo -n "A: "
$PY -m minimind_spec generate "$OUT/run" "what is three plus four?" --max-new-tokens 24
if ls "$OUT"/run/*/loss.png >/dev/null 2>&1; then
  echo "loss plots: $(ls "$OUT"/run/*/loss.png | tr '\n' ' ')(TensorBoard: tensorboard --logdir $OUT/run)"
else
  echo "no loss plots: matplotlib is not installed here (make demo installs it)"
fi
