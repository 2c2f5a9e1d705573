# The GPU readings of docs/gpu.md, in one command on a CUDA machine, from the repository root:
#     bash bench/device_run.sh            # about 6 minutes on one H200; logs in $OUT (default gpu_readings/)
# tools/gpu_check.py with each of the README's three commands (the static KV cache, the CUDA default), then
# the default command with --no-static-cache (the dynamic cache); every check also times both cache paths at
# the same prompts. Wheels in .whl/ are installed first where present (for a machine without `datasets`).
OUT=${OUT:-gpu_readings}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, datasets; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'datasets', datasets.__version__)"; } 2>&1 | tee "$OUT/env.txt"
check() { name=$1; shift; timeout 150 python3 "$@" 2>&1 | tee "$OUT/check_$name.txt"; }
check default tools/gpu_check.py --steps 3
check mb4 tools/gpu_check.py --steps 3 --micro-batch-size 4
check mb4_ckpt tools/gpu_check.py --steps 3 --micro-batch-size 4 --gradient-checkpointing
check dynamic tools/gpu_check.py --steps 3 --no-static-cache
