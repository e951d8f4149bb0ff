#!/usr/bin/env bash
# RAG vs LoRA finetuning on CMRC 2018 (trial), end to end:
#   ingest the passages into a knowledge base -> split the QA by question (seeded, deterministic)
#   -> train a LoRA adapter on the train split -> kbqa eval compare on the test split -> report.
#
# Default (CPU subset, < 30 min on 2 cores): the first 12 passages (sorted by file name) and
# their 58 questions; 25% of the questions (15) held out as the test split, the other 43 train
# the adapter (2 epochs); plus 5 off-topic questions (about passages not in the knowledge
# base: refusing is right); the packaged SmolLM2-135M-Instruct; 4 systems x 2 repeats, greedy.
#
# Full size on a GPU (all 256 passages, 20% of the 1002 questions, the production model):
#   DOCS=0 HOLDOUT=0.2 MODEL=/models/chatglm3-6b-hf EPOCHS=3 REPEATS=3 MAX_TOKENS=128 TOP_K=5 \
#     bash bench/rag_vs_finetune.sh
# Every knob below is an environment variable. Re-running resumes: the adapter is kept when
# it exists and `kbqa eval compare` asks only the missing answers.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/cmrc2018-trial}
WORK=${WORK:-data/bench/rag-vs-finetune}
DOCS=${DOCS:-12}
NEGATIVES=${NEGATIVES:-5}
HOLDOUT=${HOLDOUT:-0.25}
MODEL=${MODEL:-smollm2-135m-instruct}
EPOCHS=${EPOCHS:-2}
REPEATS=${REPEATS:-2}
TEMPERATURE=${TEMPERATURE:-0}
MAX_TOKENS=${MAX_TOKENS:-32}
TOP_K=${TOP_K:-3}
KB=${KB:-cmrc-trial}
PY=${PY:-.venv/bin/python}
KBQA=${KBQA:-.venv/bin/kbqa}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False
export KBQA_DATA_DIR="$WORK/data"
export KBQA_MODELS_DIR=${KBQA_MODELS_DIR:-data/models}
export KBQA_INGEST__WORKERS=0

start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
mkdir -p "$WORK"

step "subset: DOCS=$DOCS passages of $DATA (0 = all)"
"$PY" bench/rag_vs_finetune.py subset --data "$DATA" --docs "$DOCS" --negatives "$NEGATIVES" \
  --out "$WORK"

step "ingest into knowledge base $KB"
"$KBQA" ingest "$WORK/docs" --kb "$KB"

step "split QA by question (holdout $HOLDOUT, seed 0)"
"$KBQA" finetune data "$WORK/qa.jsonl" --holdout "$HOLDOUT" --holdout-by question --seed 0 \
  --out "$WORK/train.jsonl"

cat > "$WORK/lora.yaml" <<YAML
# LoRA hyperparameters of the recipe (kbqa finetune train --config)
epochs: $EPOCHS
batch_size: 8
learning_rate: 0.001
max_length: 192
logging_steps: 2
save_steps: 10000
YAML
if [ ! -f "$WORK/adapter/adapter_config.json" ]; then
  step "train LoRA adapter ($MODEL, $EPOCHS epochs)"
  rm -rf "$WORK/adapter"
  "$KBQA" finetune train --model "$MODEL" --data "$WORK/train.jsonl" --out "$WORK/adapter" \
    --config "$WORK/lora.yaml" --no-progress
else
  step "adapter exists: $WORK/adapter (delete it to retrain)"
fi

step "kbqa eval compare (resumable)"
"$KBQA" eval compare --qa "$WORK/train.holdout.jsonl" --kb "$KB" --model "$MODEL" \
  --adapter "$WORK/adapter" --systems base,rag,lora,rag+lora --repeats "$REPEATS" \
  --temperature "$TEMPERATURE" --max-tokens "$MAX_TOKENS" --top-k "$TOP_K" \
  --negatives "$WORK/negatives.jsonl" --out "$WORK/report"

step "table"
"$PY" bench/rag_vs_finetune.py table "$WORK/report/summary.json"
echo "wall_s=$(( $(date +%s) - start )) report=$WORK/report/report.html"
