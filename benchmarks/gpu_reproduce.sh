#!/usr/bin/env bash
# Table 2 (CIFAR-10-LT, IF 100, the eight single-model rows, seed 0) on one GPU, from a bare
# checkout on a machine that has PyTorch and torchvision but no network: nothing is installed
# or downloaded, the package runs from src/.
#
#   benchmarks/gpu_reproduce.sh BUNDLE_DIR OUT_DIR
#
# BUNDLE_DIR holds cifar10_lt_bundle.npz and unpack_bundle.py (the compact, lossless copy of the
# CIFAR-10-LT images; the full training archive is too large to carry). To prepare it beside a
# checkout:  mkdir -p .bundle && cp ../shared/data/cifar10_lt_bundle.npz \
#            ../shared/data/unpack_bundle.py .bundle/ && echo /.bundle/ >> .git/info/exclude
#
# Order: a profile of one training step (benchmarks/profile_step.py; PROFILE=0 leaves it out),
# the reproduction (the result), then the benchmark in the time left, all inside a wall-clock
# budget (BUDGET seconds, default 560, so the whole script ends inside a 10-minute slot):
# reproduce gets the budget less BENCH_MIN seconds (default 100); where it runs out, every run
# is stopped at a step boundary with a mid-epoch checkpoint (rerunning the same command on
# the unpacked archive resumes them), and reproduce.txt lists how far each run got. The packed
# runs share the GPU through CUDA MPS where nvidia-cuda-mps-control is there and a test client
# connects (MPS=0 turns it off): without it the kernels of separate processes never overlap.
#
# OUT_DIR receives at most 8 files: device.txt (GPU, driver, torch, MPS), profile.txt,
# reproduce.txt (the command's output with the report of the finished runs, then each run's last
# epoch and evaluation), benchmark.txt (benchmarks/jpeg_input.py with its data.decode=device
# line, when 200 s are left, then benchmarks/gpu_throughput.py as far as it got),
# table2_runs.tar.gz (every run directory: config, log.jsonl, metrics.json, plots; report.md,
# report.csv and reproduce.png) and table2_checkpoints.tar.gz.0, .1, ... (parts of one archive of
# each run's checkpoint: for a finished run the final weights, about 2 MB, so `dbm-ltr eval` and
# `dbm-ltr analyze` work on them without training; for an unfinished one what `reproduce`
# resumes from).
#
# Device time is short (15 minutes a session, 10 a command) and the eight rows need about 13
# minutes of training on an H100 (results/cifar10_lt_if100_h100_table2_partial/), so one call
# cannot finish them. WORK=DIR keeps the unpacked data and the run directories in DIR (relative
# to the checkout, ignored by git) instead of a temporary folder: a second call on the same
# machine, while it is still warm, skips the unpacking and resumes every run from its checkpoint.
# Two calls that finish the table:
#   WORK=.gpu_work PROFILE=0 BENCH=0 BUDGET=560 bash benchmarks/gpu_reproduce.sh .bundle $OUT
#   WORK=.gpu_work PROFILE=0 BENCH=0 BUDGET=300 bash benchmarks/gpu_reproduce.sh .bundle $OUT
#
# Knobs (environment): WORK, BUDGET, BENCH_MIN, MPS (auto|0), PROFILE (1|0), BENCH (1|0), BENCH_STEPS
# (default 100), BENCH_JOBS (1,2,4,8), BENCH_FLAGS (extra flags of the benchmark, e.g.
# --only pipelines,eager,packed), JOBS (packed runs of reproduce, default 8), ROWS (table2),
# SEEDS (0), EXTRA (more --set overrides for every run), PYTHON (default python3), COMMIT (the
# commit to name in device.txt where git is missing).
set -euo pipefail

bundle_dir=${1:?usage: benchmarks/gpu_reproduce.sh BUNDLE_DIR OUT_DIR}
out=${2:?usage: benchmarks/gpu_reproduce.sh BUNDLE_DIR OUT_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
bundle_dir=$(cd "$bundle_dir" 2>/dev/null && pwd) || { echo "error: no folder $1 (BUNDLE_DIR)" >&2; exit 2; }
for f in cifar10_lt_bundle.npz unpack_bundle.py; do
  [ -f "$bundle_dir/$f" ] || { echo "error: $bundle_dir/$f is missing; copy it from shared/data (see the comment at the top of $0)" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
if [ -n "${WORK:-}" ]; then  # kept: a later call resumes from it
  mkdir -p "$WORK"
  work=$(cd "$WORK" && pwd)
else
  work=$(mktemp -d)
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-$(command -v python3 || command -v python)}  # GPU images often have python3 alone
start=$(date +%s)

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  "$py" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  echo "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
} > "$out/device.txt"
cat "$out/device.txt"

if [ "${MPS:-auto}" != 0 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY="$work/mps" CUDA_MPS_LOG_DIRECTORY="$work/mps-log"
  rm -rf "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"  # an earlier call's (WORK)
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 60 "$py" -c "import torch; assert torch.ones(2, device='cuda').sum().item() == 2"; then
    trap 'echo quit | nvidia-cuda-mps-control >/dev/null 2>&1 || true' EXIT
    echo "MPS: on (packed runs share the GPU)" | tee -a "$out/device.txt"
  else
    echo quit | nvidia-cuda-mps-control >/dev/null 2>&1 || true
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS: off (the control daemon or a test client failed; packed runs time-share the GPU)" | tee -a "$out/device.txt"
  fi
else
  echo "MPS: off (${MPS:+MPS=$MPS; }nvidia-cuda-mps-control not used)" | tee -a "$out/device.txt"
fi

if [ -f "$work/data/.unpacked" ]; then
  echo "data: $work/data (unpacked by an earlier call)"
else
  rm -rf "$work/data"
  if ! "$py" "$bundle_dir/unpack_bundle.py" "$bundle_dir/cifar10_lt_bundle.npz" "$work/data"; then
    echo "error: could not unpack $bundle_dir/cifar10_lt_bundle.npz (damaged or incomplete copy?); copy it again from shared/data" >&2
    exit 2
  fi
  touch "$work/data/.unpacked"
fi

left() { echo $(( ${BUDGET:-560} - ($(date +%s) - start) )); }
at_least_1() { if [ "$1" -lt 1 ]; then echo 1; else echo "$1"; fi; }  # timeout 0 would mean no limit
set +e
if [ "${PROFILE:-1}" != 0 ]; then  # where one step's time goes (kernels or host), DBM-CE, eager
  timeout -s INT -k 10 90 "$py" benchmarks/profile_step.py --root "$work/data" > >(tee "$out/profile.txt") 2>&1
fi
# SIGINT to reproduce and its runs (their process group): each run stops at a step boundary with a checkpoint
timeout -s INT -k 60 "$(at_least_1 $(( $(left) - ${BENCH_MIN:-100} )))" \
  "$py" -m dbm_ltr.cli reproduce --data cifar10_lt --imbalance-factor 100 --rows "${ROWS:-table2}" \
  --seeds "${SEEDS:-0}" --jobs "${JOBS:-8}" --progress-every 60 --out "$work/table2" --set "data.root=$work/data" ${EXTRA:-} \
  > >(tee "$out/reproduce.txt") 2>&1
status=$?
set -e
{
  echo "reproduce exit status $status after $(( $(date +%s) - start ))s in all"
  "$py" - "$work/table2" <<'PY'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
print("\nrun                   epochs done   last test top-1 (epoch)   finished")
if not root.is_dir():  # reproduce stopped before its first run (its error is above)
    print(f"(no runs in {root})")
for run in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "log.jsonl").is_file() else []
    epochs = max((r["epoch"] for r in rows if "epoch" in r), default=0)
    evals = [r for r in rows if "test_top1" in r]
    last = f"{evals[-1]['test_top1']:.2f} ({evals[-1].get('epoch', '?')})" if evals else "-"
    finished = (run / "metrics.json").is_file()
    if finished:
        last = f"{json.loads((run / 'metrics.json').read_text())['top1']:.2f} (final)"
    print(f"{run.name:22s} {epochs:11d}   {last:25s} {'yes' if finished else 'no'}")
PY
} 2>&1 | tee -a "$out/reproduce.txt"

if [ "${BENCH:-1}" != 0 ]; then
  set +e
  # the JPEG input of the large-scale recipes, data.decode=device included (nvJPEG: its first run on a GPU)
  if [ "$(left)" -gt 200 ]; then
    timeout -s INT -k 10 90 "$py" benchmarks/jpeg_input.py --count 1024 --repeats 1 --workers 4 \
      > >(tee "$out/benchmark.txt") 2>&1
    echo "jpeg_input exit status $? after $(( $(date +%s) - start ))s in all" | tee -a "$out/benchmark.txt"
  else
    echo "jpeg_input: left out, under 200 s of the budget left" | tee "$out/benchmark.txt"
  fi
  timeout -s INT -k 20 "$(at_least_1 $(( $(left) - 20 )))" "$py" benchmarks/gpu_throughput.py --root "$work/data" \
    --steps "${BENCH_STEPS:-100}" --jobs "${BENCH_JOBS:-1,2,4,8}" ${BENCH_FLAGS:-} > >(tee -a "$out/benchmark.txt") 2>&1
  echo "benchmark exit status $? after $(( $(date +%s) - start ))s in all" | tee -a "$out/benchmark.txt"
  set -e
fi

# the runs (report.csv and reproduce.png included) without their checkpoints; the checkpoints
# apart, in parts of 15 MB (the GPU machine hands back files of 16 MB at most; unfinished runs
# carry their optimizer state, about 4 MB each): cat table2_checkpoints.tar.gz.* | tar xz
tar czf "$out/table2_runs.tar.gz" -C "$work" --exclude=tb --exclude='checkpoint*' table2
(cd "$work" && find table2 -name checkpoint.pt -print0 | tar cz --null -T - | split -b 15m -d -a 1 - "$out/table2_checkpoints.tar.gz.")
[ -n "${WORK:-}" ] || rm -rf "$work"
exit "$status"
