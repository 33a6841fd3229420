#!/usr/bin/env bash
# The prepared check for a one-GPU machine (an NVIDIA H200; torch, transformers, peft and
# accelerate installed; no internet), about 9 minutes, every step bounded by `timeout`:
#   1. machine facts: nvidia-smi, torch and CUDA versions;
#   2. leantune from this working tree (PYTHONPATH=src, no dependencies installed) plus the
#      wheels in benchmarks/wheels/ if present (what the image lacks: pydantic, trl, datasets,
#      bitsandbytes, liger-kernel; ~47 MB, fetched beforehand with --fetch-wheels; carry them);
#   3. the CUDA tests: pytest -m cuda tests/gpu (skipped if the folder is missing);
#   4. benchmarks/gpu_bench.py: SFT with LoRA, QLoRA and full fine-tuning of a Llama-3.2-1B-
#      shaped model in bf16 beside TRL's SFTTrainer (and TRL with Liger's kernels) at the two
#      equal settings, MFU against the GPU's measured bf16 matmul peak, leantune's estimate
#      (2 processes too when there are 2+ GPUs), JSON to $OUT/gpu_check.json and
#      benchmarks/results/gpu_check.json;
#      the log to $OUT/gpu_check.log.
# A failing step is reported and the next one runs; the exit status is that of step 4.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (python3 there holds torch)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --tiny      # dry run on CPU, tiny model
#   bash benchmarks/gpu_check.sh --fetch-wheels   # beforehand, with internet: fill benchmarks/wheels/
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=benchmarks/wheels
# What the H200 image (Python 3.12) lacks, at the versions of this project's venv.
NEEDED="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection trl==1.16.0 datasets==5.2.0
        dill multiprocess bitsandbytes==0.50.2 liger-kernel==0.8.5"

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p "$WHEELS"
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$WHEELS" $NEEDED
fi
OUT=${OUT:-$(mktemp -d)}
exec > >(tee "$OUT/gpu_check.log") 2>&1  # the whole log comes back with the JSON
if [ "${1:-}" = "--tiny" ]; then  # a dry run leaves benchmarks/results/ alone
    BENCH_ARGS=(--device cpu --tiny --out "$OUT/gpu_check.json")
else
    BENCH_ARGS=(--out "$OUT/gpu_check.json" --out benchmarks/results/gpu_check.json)
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "1. machine"
timeout 30 nvidia-smi || echo "(no nvidia-smi)"
timeout 10 nvidia-smi -L || true
timeout 60 "$PY" -c "import torch, transformers, accelerate; print('python', __import__('sys').version.split()[0],
 '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpus', torch.cuda.device_count(),
 '| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"

step "2. install"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    timeout 120 "$PY" -m pip install -q --no-deps --no-index "$WHEELS"/*.whl || echo "(wheel install failed)"
else
    echo "(no $WHEELS/*.whl)"
fi
timeout 60 "$PY" - <<'EOF'
import importlib.util
names = ["leantune", "pydantic", "typer", "rich", "yaml", "safetensors", "peft", "accelerate", "matplotlib",
         "sklearn", "datasets", "trl", "bitsandbytes", "deepspeed"]
print("importable:", " ".join(f"{n}={'yes' if importlib.util.find_spec(n) else 'NO'}" for n in names))
EOF

step "3. CUDA tests"
if [ -d tests/gpu ]; then
    timeout 120 "$PY" -m pytest -m cuda tests/gpu -q -p no:cacheprovider; echo "pytest exit status $?"
else
    echo "(no tests/gpu folder)"
fi

step "4. SFT against TRL, MFU and the estimate"
timeout 400 "$PY" benchmarks/gpu_bench.py "${BENCH_ARGS[@]}" --deadline 340
status=$?
step "done: exit status $status; results in $OUT/gpu_check.json"
exit $status
