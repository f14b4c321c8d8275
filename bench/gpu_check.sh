#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): on a machine with CUDA, the gpu-marked tests, BERT-base-size training
# throughput (ours against an HF Trainer-style loop, same precision) and prediction throughput, as one
# table, in under 8 minutes. Without CUDA it prints one line and exits 0; --dry-run runs it on the CPU.
#
#   bash bench/gpu_check.sh [--dry-run] [options of python -m bench.gpu_check]     (or: make gpu-check)
#
# The accelerator machine runs its own image's Python and torch, with no network and none of this
# project's pins: where the project is not installed for the Python used, the wheels in .whl/ (made here,
# once, by `bash bench/gpu_wheels.sh`; git-ignored, about 17 MiB) are installed into /tmp/site first and
# put on PYTHONPATH. From this workplace's device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# The table also lands in $OUT (gpu_check.md, gpu_check.json) when OUT is set, else in runs/gpu-check/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
SITE=${GPU_CHECK_SITE:-/tmp/site}
if ! "$PY" -I -c "import importlib.metadata as m; m.version('zh-ner')" 2>/dev/null; then  # -I: not the checkout's own zh_ner.egg-info
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: the project is not installed for $PY: installing the carried wheels from .whl/ into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { echo "gpu_check: installing .whl/*.whl into $SITE failed (see above)"; exit 1; }
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: the project is not installed for $PY and .whl/ holds no wheels" \
      "(make them with: bash bench/gpu_wheels.sh, and carry .whl); going on with what $PY has"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
# 470 s for the Python part: with the wheels' install, the whole check stays under 8 minutes
timeout -k 10 "${GPU_CHECK_TIMEOUT_S:-470}" "$PY" -m bench.gpu_check "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_check: stopped after ${GPU_CHECK_TIMEOUT_S:-470} s (the table above is partial)"
exit "$rc"
