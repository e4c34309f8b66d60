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
# OUT_DIR receives 8 files: device.txt (GPU, driver, torch), benchmark.txt
# (benchmarks/gpu_throughput.py), reproduce.txt (the command's output), report.md,
# report.csv, reproduce.png, table2_runs.tar.gz (every run directory: config, log.jsonl,
# metrics.json, plots) and table2_checkpoints.tar.gz (each run's final checkpoint, weights only,
# about 2 MB, so `dbm-ltr eval` and `dbm-ltr analyze` work on them without training).
#
# Knobs (environment): BENCH_STEPS (default 200), BENCH_JOBS (1,2,4,8), BENCH_FLAGS (extra
# flags of the benchmark, e.g. --skip-compile), JOBS (packed runs of reproduce, default 8),
# ROWS (table2), SEEDS (0), EXTRA (more --set overrides for every run).
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
work=$(mktemp -d)
cd "$repo"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$out/device.txt"
cat "$out/device.txt"

if ! python "$bundle_dir/unpack_bundle.py" "$bundle_dir/cifar10_lt_bundle.npz" "$work/data"; then
  echo "error: could not unpack $bundle_dir/cifar10_lt_bundle.npz (damaged or incomplete copy?); copy it again from shared/data" >&2
  exit 2
fi

python benchmarks/gpu_throughput.py --root "$work/data" --steps "${BENCH_STEPS:-200}" \
  --jobs "${BENCH_JOBS:-1,2,4,8}" ${BENCH_FLAGS:-} 2>&1 | tee "$out/benchmark.txt"
echo "benchmark done after $(( $(date +%s) - start ))s" | tee -a "$out/benchmark.txt"

set +e
python -m dbm_ltr.cli reproduce --data cifar10_lt --imbalance-factor 100 --rows "${ROWS:-table2}" \
  --seeds "${SEEDS:-0}" --jobs "${JOBS:-8}" --out "$work/table2" --set "data.root=$work/data" ${EXTRA:-} \
  2>&1 | tee "$out/reproduce.txt"
status=${PIPESTATUS[0]}
set -e
echo "reproduce exit status $status after $(( $(date +%s) - start ))s in all" | tee -a "$out/reproduce.txt"

for f in report.md report.csv reproduce.png; do
  [ -f "$work/table2/$f" ] && cp "$work/table2/$f" "$out/"
done
# the runs without their checkpoints, and the final checkpoints (weights only, about 2 MB each)
# apart, so each archive stays under the 16 MB a file the GPU machine hands back
tar czf "$out/table2_runs.tar.gz" -C "$work" --exclude=tb --exclude='checkpoint*' table2
(cd "$work" && find table2 -name checkpoint.pt -print0 | tar czf "$out/table2_checkpoints.tar.gz" --null -T -)
rm -rf "$work"
exit "$status"
