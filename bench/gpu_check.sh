#!/usr/bin/env bash
# One prepared check on a machine with one GPU (torch, transformers, peft, triton; no vLLM, no Ray), <= 8 minutes:
#   1. bench/distill_loss.py --device cuda      our streamed distillation loss vs naive (and TRL's)
#   2. bench/liger_jsd.py                       beside Liger-Kernel's fused linear JSD (wheel carried along)
#   3. bench/logprobs.py on CUDA                the trainer's chunked log-probs, whole vs chunked
#   4. bench/fsdp_step.py                       one FSDP2 step of a ~1B random model: tokens/s, MFU
#
#   bash bench/gpu_check.sh                     # everything, on cuda
#   bash bench/gpu_check.sh --device cpu        # a dry run of the same scripts, tiny shapes, on CPU
#
# Liger: a wheel in ${LIGER_WHEELS:-bench/wheels} (pip download liger-kernel --no-deps -d bench/wheels) is
# installed with --no-deps into a scratch target dir first. Ray is not there: posttrain's trainer modules import
# it at the top but these scripts never call it, so an empty stand-in module is put on PYTHONPATH for them.
set -uo pipefail
PY=${PYTHON:-python}   # the interpreter with torch (PYTHON=.../.venv/bin/python)
DEVICE=cuda
[[ "${1:-}" == "--device" ]] && DEVICE="${2:-cuda}"
cd "$(dirname "$0")/.."
SCRATCH=$(mktemp -d /tmp/gpu-check-XXXX)
trap 'rm -rf "$SCRATCH"' EXIT
mkdir -p "$SCRATCH/site"
if ! "$PY" -c "import ray" 2>/dev/null; then
  mkdir "$SCRATCH/site/ray"
  echo '"""Stand-in: these benches import modules that import ray, and never call it."""' > "$SCRATCH/site/ray/__init__.py"
fi
WHEELS=${LIGER_WHEELS:-bench/wheels}
if ls "$WHEELS"/liger_kernel-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps --target "$SCRATCH/site" "$WHEELS"/liger_kernel-*.whl || echo "liger wheel did not install"
fi
export PYTHONPATH="$PWD:$SCRATCH/site:${PYTHONPATH:-}"
START=$(date +%s)
step() { echo; echo "=== $1 ($(( $(date +%s) - START )) s in; $(uptime | sed 's/.*load/load/'))"; shift; timeout "${STEP_TIMEOUT:-150}" "$@" || echo "(exit $?)"; }
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
if [[ "$DEVICE" == cuda ]]; then
  step "distill loss, cuda" "$PY" bench/distill_loss.py --device cuda --teachers 1,4 --chunks 1024,4096 --no-trl
  step "liger fused linear JSD beside ours" "$PY" bench/liger_jsd.py
  step "log-probs, cuda" "$PY" bench/logprobs.py --device cuda
  step "FSDP2 step, ~1B" "$PY" bench/fsdp_step.py --device cuda
else
  step "distill loss, cpu (dry run)" "$PY" bench/distill_loss.py --device cpu --tokens 256 --vocab 4096 --hidden 64 --teachers 1 --chunks 128 --no-trl --skip-naive
  step "FSDP2 step, cpu (dry run)" "$PY" bench/fsdp_step.py --device cpu --layers 1 --batch 2 --length 64 --steps 1
fi
echo; echo "=== done in $(( $(date +%s) - START )) s"
