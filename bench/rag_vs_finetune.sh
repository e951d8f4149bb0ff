#!/usr/bin/env bash
# RAG vs LoRA finetuning, end to end, with commands a user would type:
#   ingest documents into a knowledge base -> SFT data (the knowledge base's chunks as
#   knowledge examples + question/answer pairs; a deterministic test split by question) ->
#   train a LoRA adapter -> kbqa eval compare (base, rag, lora, rag+lora) on the test split
#   plus off-topic questions -> the table.
#
# Two recipes (RECIPE=...), both sized to finish on a 2-core CPU within an hour:
#   cmrc     CMRC 2018 trial (../shared/data/cmrc2018-trial): the first DOCS passages and
#            every question about them; HOLDOUT of the questions are the test split, the
#            others train the adapter (with the passages' chunks as knowledge examples).
#   dengbao  the 等级保护 2.0 document (../shared/data/dengbao): the model writes
#            question/answer pairs from MAX_CHUNKS of its chunks (`kbqa finetune data
#            --generate-qa`; kept/dropped counts in WORK/train.generate-qa.json); HOLDOUT of
#            them are the test split.
# Off-topic questions (refusing is right): cmrc questions about passages not in the knowledge
# base (cmrc), cmrc questions at all (dengbao).
#
# The model: the packaged Qwen2.5-Coder-0.5B-Instruct (reads Chinese; training runs on its
# transformers copy, the comparison on llama.cpp with the adapter converted to GGUF LoRA).
# Every knob below is an environment variable. Re-running resumes: the data and the adapter
# are kept when they exist, and `kbqa eval compare` asks only the missing answers.
#
# Full size on a GPU (ChatGLM3-6B converted as in the README):
#   RECIPE=cmrc DOCS=0 HOLDOUT=0.2 MODEL=/models/chatglm3-6b-hf EPOCHS=3 MAX_TOKENS=128 \
#     TOP_K=5 bash bench/rag_vs_finetune.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=${RECIPE:-cmrc}
SHARED=${SHARED:-../shared/data}
WORK=${WORK:-data/bench/rag-vs-finetune-$RECIPE}
MODEL=${MODEL:-qwen2.5-coder-0.5b-instruct}
GEN_MODEL=${GEN_MODEL:-$MODEL}
DOCS=${DOCS:-8}
MAX_CHUNKS=${MAX_CHUNKS:-12}
NEGATIVES=${NEGATIVES:-6}
if [ "$RECIPE" = dengbao ]; then HOLDOUT=${HOLDOUT:-0.5}; else HOLDOUT=${HOLDOUT:-0.3}; fi
EPOCHS=${EPOCHS:-2}
MAX_LENGTH=${MAX_LENGTH:-384}
LEARNING_RATE=${LEARNING_RATE:-0.0005}
REPEATS=${REPEATS:-2}
SAMPLE_TEMPERATURE=${SAMPLE_TEMPERATURE:-0.7}
SAMPLE_REPEATS=${SAMPLE_REPEATS:-5}
MAX_TOKENS=${MAX_TOKENS:-48}
TOP_K=${TOP_K:-3}
KB=${KB:-$RECIPE}
PY=${PY:-.venv/bin/python}
KBQA=${KBQA:-.venv/bin/kbqa}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False
export KBQA_DATA_DIR="$WORK/data"
export KBQA_MODELS_DIR=${KBQA_MODELS_DIR:-data/models}
export KBQA_INGEST__WORKERS=0

start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
mkdir -p "$WORK"

case "$RECIPE" in
  cmrc)
    step "subset: DOCS=$DOCS passages of $SHARED/cmrc2018-trial (0 = all)"
    "$PY" bench/rag_vs_finetune.py subset --data "$SHARED/cmrc2018-trial" --docs "$DOCS" \
      --negatives "$NEGATIVES" --out "$WORK"
    step "ingest into knowledge base $KB"
    "$KBQA" ingest "$WORK/docs" --kb "$KB"
    if [ ! -f "$WORK/train.jsonl" ]; then
      step "SFT data: train questions + the passages' chunks; test split by question ($HOLDOUT, seed 0)"
      "$KBQA" finetune data "$WORK/qa.jsonl" --kb "$KB" --holdout "$HOLDOUT" \
        --holdout-by question --seed 0 --out "$WORK/train.jsonl"
    fi
    ;;
  dengbao)
    mkdir -p "$WORK/docs"
    cp "$SHARED/dengbao/grade-protection.md" "$WORK/docs/"
    "$PY" bench/rag_vs_finetune.py negatives --data "$SHARED/cmrc2018-trial" \
      --count "$NEGATIVES" --out "$WORK/negatives.jsonl"
    step "ingest into knowledge base $KB"
    "$KBQA" ingest "$WORK/docs" --kb "$KB"
    if [ ! -f "$WORK/train.jsonl" ]; then
      step "SFT data: $MAX_CHUNKS chunks + QA pairs written by $GEN_MODEL; test split by question ($HOLDOUT, seed 0)"
      KBQA_LLM__MODEL="$GEN_MODEL" "$KBQA" finetune data --kb "$KB" --generate-qa \
        --max-chunks "$MAX_CHUNKS" --holdout "$HOLDOUT" --holdout-by question --seed 0 \
        --out "$WORK/train.jsonl"
    fi
    ;;
  *)
    echo "RECIPE must be cmrc or dengbao, not $RECIPE" >&2
    exit 2
    ;;
esac

cat > "$WORK/lora.yaml" <<YAML
# LoRA hyperparameters of the recipe (kbqa finetune train --config)
epochs: $EPOCHS
batch_size: 4
learning_rate: $LEARNING_RATE
max_length: $MAX_LENGTH
logging_steps: 5
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

step "kbqa eval compare: greedy, then sampled x$SAMPLE_REPEATS at $SAMPLE_TEMPERATURE; gold-answer likelihood, forgetting probe (resumable)"
"$KBQA" eval compare --qa "$WORK/train.holdout.jsonl" --kb "$KB" --model "$MODEL" \
  --adapter "$WORK/adapter" --systems base,rag,lora,rag+lora --repeats "$REPEATS" \
  --max-tokens "$MAX_TOKENS" --top-k "$TOP_K" --negatives "$WORK/negatives.jsonl" \
  --sampling-temperature "$SAMPLE_TEMPERATURE" --sampling-repeats "$SAMPLE_REPEATS" \
  --out "$WORK/report"

step "table"
"$PY" bench/rag_vs_finetune.py table "$WORK/report/summary.json"
echo "wall_s=$(( $(date +%s) - start )) report=$WORK/report/report.html"
