#!/usr/bin/env bash
# The prepared GPU check of sam-l1dfl (`make gpu-check`; docs/gpu.md): in about 8 minutes on one
# GPU, the CUDA tests and the whole suite, bench_encoder and bench_finetune at full size
# (vit_b_ori, batch 8, 11 clicks; L1DFL, DiceCE and DiceFocal), the demo and a short stand-in
# pretraining, all into ONE log file.
#
#   scripts/gpu_check.sh [--wheels DIR] [--steps LIST] [--budget SECONDS] [--dry-run]
#
#   --wheels DIR   install the wheels in DIR (and the wheels inside DIR/*.tar.xz) offline first,
#                  with --no-index --no-deps into a private site folder: never another torch
#                  (torch, torchvision, triton and nvidia-* wheels in DIR are skipped)
#   --steps LIST   run only these steps, comma-separated, in the usual order:
#                  env,wheels,imports,cuda_tests,bench_encoder,bench_finetune,demo,pretrain,suite,bench_compile
#   --budget S     total seconds (default 480); each step's time limit is cut to what is left
#                  (150 s kept for the suite until it runs; the compiled-kernel bench, last,
#                  gets what remains)
#   --dry-run      write the plan (every command) to the log and check the files it needs; run nothing
#
# Environment: GPU_CHECK_DIR (the log's folder; default gpu_check_out/; on the device tool use
# $OUT), GPU_CHECK_WORK (scratch: runs, demo, JSON; default /tmp/sam_l1dfl_gpu_check),
# GPU_CHECK_WHEELS (as --wheels), PYTHON (default: python3, or .venv/bin/python when it exists),
# GPU_CHECK_XDIST (pytest-xdist workers for the suite, default 8; 0 = serial).
# Exit status: 0 when every step passed, 1 otherwise (the summary at the end of the log says which).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LOG_DIR="${GPU_CHECK_DIR:-$ROOT/gpu_check_out}"
WORK="${GPU_CHECK_WORK:-/tmp/sam_l1dfl_gpu_check}"
WHEELS="${GPU_CHECK_WHEELS:-}"
BUDGET=480
DRY=0
STEPS="env,wheels,imports,cuda_tests,bench_encoder,bench_finetune,demo,pretrain,suite,bench_compile"
XDIST="${GPU_CHECK_XDIST:-8}"

while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: $1: unknown option (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="python3"; fi

mkdir -p "$LOG_DIR" "$WORK" || { echo "error: $LOG_DIR: cannot create the log folder" >&2; exit 2; }
LOG="$LOG_DIR/gpu_check.log"
: > "$LOG"
SITE="$WORK/site"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
T0=$(date +%s)
SUMMARY=()
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
wanted() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_step NAME MAX_SECONDS COMMAND...: logged, timed, limited to what the budget has left (less
# RESERVE, kept for the suite while it has not run); a failure is recorded and the check goes on
RESERVE=0
run_step() {
  local name="$1" max="$2"; shift 2
  wanted "$name" || return 0
  local limit rem
  rem=$(( $(left) - RESERVE - 5 ))
  limit=$(( max < rem ? max : rem ))
  say ""
  say "=== $name (limit ${limit}s, $(date -u +%H:%M:%S) UTC, $(( $(date +%s) - T0 ))s into the check)"
  say "\$ $*"
  if [ "$DRY" = 1 ]; then SUMMARY+=("$name|planned|0"); return 0; fi
  if [ "$limit" -lt 10 ]; then
    say "--- skipped: the budget is spent"; SUMMARY+=("$name|skipped (budget)|0"); FAILED=1; return 0
  fi
  local t=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t )) status="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${dt}s"; FAILED=1
  elif [ $rc -ne 0 ]; then status="FAILED (exit $rc)"; FAILED=1; fi
  say "--- $name: $status in ${dt}s"
  SUMMARY+=("$name|$status|$dt")
}

install_wheels() {
  local dir="$1" tmp="$WORK/wheels"
  rm -rf "$tmp"; mkdir -p "$tmp" "$SITE"
  for a in "$dir"/*.tar.xz; do [ -e "$a" ] && tar -xJf "$a" -C "$tmp"; done
  find "$dir" "$tmp" -maxdepth 2 -name '*.whl' -exec cp -n {} "$tmp/" \; 2>/dev/null
  # never another torch: the GPU image's torch, triton and CUDA libraries stay
  find "$tmp" -maxdepth 1 \( -name 'torch-*' -o -name 'torchvision-*' -o -name 'torchaudio-*' \
       -o -name 'triton-*' -o -name 'nvidia_*' \) -print -delete
  ls "$tmp"/*.whl >/dev/null 2>&1 || { echo "no wheels in $dir"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$tmp"/*.whl
}

say "# sam-l1dfl GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && echo ' (uncommitted changes)')"
say "# log: $LOG; scratch: $WORK; python: $PY; budget ${BUDGET}s; steps: $STEPS$( [ "$DRY" = 1 ] && echo '; DRY RUN')"
if [ "$DRY" = 1 ]; then
  for f in scripts/bench_encoder.py scripts/bench_finetune.py scripts/demo.py scripts/pretrain_standin.py tests; do
    [ -e "$ROOT/$f" ] || { say "missing: $f"; FAILED=1; }
  done
  command -v timeout >/dev/null || { say "missing: timeout (coreutils)"; FAILED=1; }
  [ -z "$WHEELS" ] || [ -d "$WHEELS" ] || { say "missing: the wheel folder $WHEELS"; FAILED=1; }
fi

wanted suite && RESERVE=150  # the whole suite needs about 2 minutes with 8 xdist workers
run_step env 20 bash -c "nvidia-smi || echo 'nvidia-smi: not found'; \"$PY\" -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"\")'; nproc; free -g | head -2"
if [ -n "$WHEELS" ]; then
  export -f install_wheels; export PY SITE WORK  # `timeout` runs programs, not shell functions
  run_step wheels 60 bash -c 'install_wheels "$1"' install_wheels "$WHEELS"
fi
run_step imports 40 "$PY" -c "
import importlib, sys
need = ['torch', 'numpy', 'monai', 'SimpleITK', 'cc3d', 'segment_anything', 'accelerate', 'safetensors', 'scipy',
        'pydicom', 'highdicom', 'rt_utils', 'huggingface_hub', 'tensorboard', 'matplotlib', 'einops', 'yaml', 'tqdm',
        'pytest', 'onnx', 'onnxruntime', 'sam_l1dfl']
missing = []
for m in need:
    try:
        mod = importlib.import_module(m)
        print(f'{m:18s} {getattr(mod, \"__version__\", \"\")}')
    except Exception as exc:
        missing.append(m)
        print(f'{m:18s} MISSING ({type(exc).__name__}: {exc})')
sys.exit(f'missing: {missing} (bring them as wheels: docs/gpu.md)' if missing else 0)"

# the CUDA-only tests and the three that failed with CUDA visible (issue 21), first: quick answers
run_step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs \
  "tests/test_clicks.py" "tests/test_determinism.py" \
  "tests/test_resume_trust.py::test_clean_states_resume_in_both_layouts" \
  "tests/test_cnn.py::test_resume_equals_uninterrupted" "tests/test_readme_dicom.py"
run_step bench_encoder 75 "$PY" scripts/bench_encoder.py --config vit_b_ori --batches 1 2 8 --repeats 5 --warmup 2 \
  --no-cpu --cuda-graphs --json "$WORK/bench_encoder.json"
run_step bench_finetune 90 "$PY" scripts/bench_finetune.py --preset vit_b_ori --batch 8 --clicks 11 --steps 8 \
  --warmup 2 --loss l1dfl,dicece,dicefocal --profile --json "$WORK/bench_finetune.json"
run_step demo 90 "$PY" scripts/demo.py --out "$WORK/demo"
run_step pretrain 75 "$PY" scripts/pretrain_standin.py --out "$WORK/standin" --cases 16 --quiet \
  train.max_steps=60 train.batch_size=8 train.mixed_precision=bf16 train.val_every=0 train.save_every=60 \
  train.log_every=10 data.max_val_crops=8 name=gpu_check
if wanted pretrain && [ "$DRY" = 0 ]; then
  say "--- pretrain train_log.jsonl (samples/s per 10 steps):"
  cat "$WORK/standin/runs/gpu_check/train_log.jsonl" >>"$LOG" 2>&1 || say "(no train_log.jsonl)"
fi
RESERVE=0
if [ "$XDIST" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then PAR=(-n "$XDIST"); else PAR=(); fi
run_step suite 9999 "$PY" -m pytest -q -p no:cacheprovider -rfEs "${PAR[@]}" tests
# last, with what is left: the compiled L1DFL kernel (Triton compiles for a minute or so)
run_step bench_compile 120 "$PY" scripts/bench_finetune.py --preset vit_b_ori --batch 8 --clicks 11 --steps 6 \
  --warmup 2 --loss l1dfl,dicece --no-encoder --compile --json "$WORK/bench_finetune_compiled.json"
for j in bench_encoder bench_finetune bench_finetune_compiled; do
  if [ -f "$WORK/$j.json" ]; then say "--- $j.json:"; cat "$WORK/$j.json" >>"$LOG"; echo >>"$LOG"; fi
done

say ""
say "=== summary ($(( $(date +%s) - T0 ))s of ${BUDGET}s)"
say "| step | status | seconds |"
say "|---|---|---|"
for row in "${SUMMARY[@]}"; do IFS='|' read -r n s d <<<"$row"; say "| $n | $s | $d |"; done
exit $FAILED
