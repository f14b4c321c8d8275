#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels bench/gpu_check.sh installs on the accelerator machine.
#
# That machine runs its own image's Python 3.12 with torch, transformers, tokenizers, safetensors,
# huggingface_hub, numpy, pytest and matplotlib, no network and none of this project's pins. The check
# needs, besides: the packages the image lacks (pydantic and its three helpers, pytorch-crf) and the
# project's pinned transformers (the image's is older; its huggingface_hub and tokenizers satisfy the pin's
# ranges), with the regex its metadata asks for. Binary wheels are for CPython 3.12, x86-64.
# Run from anywhere: bash bench/gpu_wheels.sh   (needs pip and a package registry; a few MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  transformers==5.24.0
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing_extensions==4.16.0
  pytorch-crf==0.7.2
  regex==2026.12.2
)
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
du -ch .whl/*.whl | tail -1
