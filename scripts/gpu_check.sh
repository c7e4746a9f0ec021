#!/usr/bin/env bash
# One GPU check for any CUDA machine, from a source checkout (pip-installed or not):
#   bash scripts/gpu_check.sh            # logs in a temporary folder; GPU_CHECK_OUT=dir to keep them
# Steps: the default suite (without the CUDA file), the CUDA-only tests, the default config,
# kill -9 + --resume ending in equal weights, the paper ABSA config for one epoch on synthetic
# data (compile + bf16 + channels_last), `absa hessian` with Lanczos, --nproc with one rank per
# GPU, and scripts/bench_gpu.py. Prints one summary table; exits 1 if any step failed.
# Without CUDA it says so and exits 0. GPU_CHECK_DEVICE=cpu runs the training steps on the CPU
# with tiny settings (how the script itself is tested on a machine without a GPU).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
mkdir -p "$OUT"

if ! $PY -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch (PYTHON=path/to/python selects another)"
    exit 1
fi
if [ "$DEVICE" = cuda ] && ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to torch $($PY -c 'import torch; print(torch.__version__)'): nothing to check"
    exit 0
fi
$PY - <<'EOF' | tee "$OUT/versions.txt"
import platform, torch
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "cpu"
print(f"gpu_check: {name} x{torch.cuda.device_count() if cuda else 0}; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, Python {platform.python_version()}")
EOF
NGPU=$($PY -c 'import torch; print(max(torch.cuda.device_count(), 1))')
tiny=$([ "$DEVICE" = cpu ] && echo 1 || echo 0)
absa() { $PY -m absa "$@"; }

rows=()
failed=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record status and seconds
    local name=$1 t0=$SECONDS status=ok
    shift
    echo "--- $name"
    if ! "$@" >"$OUT/$name.log" 2>&1; then status=FAILED failed=1; fi
    tail -n 3 "$OUT/$name.log"
    rows+=("$(printf '%-14s %-7s %5ss' "$name" "$status" $((SECONDS - t0)))")
}
skip() { rows+=("$(printf '%-14s %-7s %s' "$1" skipped "$2")"); }

suite() {
    local xdist=()
    $PY -c 'import xdist' 2>/dev/null && xdist=(-n 8)
    $PY -m pytest -q -x "${xdist[@]}" --ignore=tests/test_cuda.py "$@"
}

kill_resume() {  # kill -9 mid-run, resume, compare with an uninterrupted run
    local common=(train data.name=digits model.name=mlp model.width=16 batch.size=32
        train.epochs=12 "optim.decay_epochs=[8]" schedule.method=absa schedule.max_batch=256
        train.device="$DEVICE" train.out_dir="$OUT/kill")
    absa "${common[@]}" train.run_name=ref || return 1
    $PY -m absa "${common[@]}" train.run_name=killed & local pid=$!
    for _ in $(seq 600); do  # until 3 epochs are written, then SIGKILL
        [ "$(cat "$OUT/kill/killed/metrics.jsonl" 2>/dev/null | wc -l)" -ge 3 ] && break
        sleep 0.1
    done
    kill -9 $pid 2>/dev/null || { echo "the run ended before the kill"; return 1; }
    wait $pid 2>/dev/null
    absa train --resume "$OUT/kill/killed" || return 1
    $PY - "$OUT/kill" <<'EOF'
import sys, torch
from pathlib import Path
out = Path(sys.argv[1])
a, b = (torch.load(out / n / "last.pt", weights_only=True)["model"] for n in ("ref", "killed"))
same = all(torch.equal(a[k], b[k]) for k in a)
print("weights after kill -9 + resume equal the uninterrupted run's:", same)
sys.exit(0 if same else 1)
EOF
}

paper() {
    local size=$([ $tiny = 1 ] && echo 512 || echo 20000)
    absa train -c configs/paper/cifar10_resnet18_absa.yaml data.name=synthetic \
        data.train_size=$size train.epochs=1 "optim.decay_epochs=[]" hessian.probe_size=1024 \
        train.device="$DEVICE" train.out_dir="$OUT/runs" train.run_name=paper \
        $([ $tiny = 1 ] && echo "model.name=resnet8 train.compile=false")
}

nproc() {
    absa train --nproc "$NGPU" -c configs/digits_absa.yaml train.epochs=2 "optim.decay_epochs=[]" \
        train.device="$DEVICE" train.out_dir="$OUT/runs" train.run_name=nproc
}

if [ $tiny = 1 ]; then
    skip suite "GPU_CHECK_DEVICE=cpu"
    skip cuda-tests "GPU_CHECK_DEVICE=cpu"
else
    step suite suite
    step cuda-tests $PY -m pytest -q tests/test_cuda.py
fi
step default absa train -c configs/default.yaml train.device="$DEVICE" train.out_dir="$OUT/runs" \
    train.run_name=default $([ $tiny = 1 ] && echo "train.epochs=2 optim.decay_epochs=[]")
step kill-resume kill_resume
step paper-absa paper
step hessian absa hessian --checkpoint "$OUT/runs/default" --method lanczos -k 3 \
    --device "$DEVICE" --json "$OUT/hessian.json"
step nproc nproc
if [ $tiny = 1 ]; then skip bench-gpu "GPU_CHECK_DEVICE=cpu"; else
    step bench-gpu $PY scripts/bench_gpu.py --batch 512 --steps 20 --warmup 5
fi

echo
echo "gpu_check summary ($(head -n 1 "$OUT/versions.txt" | cut -d' ' -f2-); logs in $OUT)"
printf '%s\n' "${rows[@]}"
if ((failed)); then echo "gpu_check: FAILED"; exit 1; fi
echo "gpu_check: all steps passed"
