#!/usr/bin/env bash
# What a CUDA GPU says about smart_hf, in one run of <= 8 minutes on one H100-class GPU:
#   1. tests marked `gpu` (tests/test_gpu.py): SmartTrainer with bf16 / fp16 autocast for every pattern (exact
#      budgets, no NaN, stock reload), the 2:4 semi-structured kernels against dense at BERT-base shapes, and
#      torch.compile on CUDA against eager;
#   2. the search and fine-tune step overhead against a dense Trainer step on the GPU (benchmarks.overhead --device
#      cuda, eager and compiled, 17 and 197 tokens);
#   3. 2:4 kernel speed against dense (fp16 / bf16, BERT-base linear shapes, batch 8 x 128 tokens);
#   4. coupled slim latency against the FLOP ideal at batch 1 / 8 / 32 (benchmarks.inference, which has no device
#      option: it times on this machine's CPU);
#   5. with two or more GPUs: DDP and FSDP2 through `accelerate launch` (the recipes in recipes/accelerate/), the
#      hard stage's clean-weight fast path under DDP, and identical masks on both ranks.
# Time limits add up to 7.5 minutes on one GPU (the checks usually take less); two GPUs add up to 7 minutes.
# Usage (after `TORCH_SPEC="torch==... --index-url .../cu128" bash scripts/ensure_env.sh`):
#   bash scripts/gpu_check.sh [OUT_DIR]      # OUT_DIR defaults to $OUT, else gpu_check_results/
# Writes OUT_DIR/summary.txt (one line per check) and OUT_DIR/*.json / *.log. Without CUDA it prints one line and
# exits 0. A failing check does not stop the others; the exit status is 1 if any failed.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python)"
OUT_DIR="${1:-${OUT:-gpu_check_results}}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: skipped, no CUDA GPU visible to $PY (torch.cuda.is_available() is False)"
  exit 0
fi
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT_DIR/summary.txt"
"$PY" - >"$SUMMARY" <<'EOF'
import torch
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x "
      f"{torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})")
EOF
failed=0
check() {  # check NAME TIMEOUT_S COMMAND...: run, log to OUT_DIR/NAME.log, one summary line
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failed=1
  echo "$name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $(($(date +%s) - start)) s" >>"$SUMMARY"
  tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/    /' >>"$SUMMARY"
}

check gpu_tests 180 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
  --junitxml="$OUT_DIR/gpu_tests.xml"
check overhead 90 "$PY" -m benchmarks.overhead --device cuda --layers 12 --steps 6 --rounds 1 \
  --out "$OUT_DIR/overhead.json"
# compiling costs tens of seconds per run: the compiled side by side for the main job's pattern and shape only
check overhead_compiled 120 "$PY" -m benchmarks.overhead --device cuda --compile --layers 12 --steps 6 --rounds 1 \
  --patterns nm2:4 --shapes 17tok --out "$OUT_DIR/overhead_compiled.json"
check kernels_2to4 45 "$PY" - "$OUT_DIR/kernels_2to4.json" <<'EOF'
"""2:4 semi-structured kernels against dense: BERT-base linear shapes (768 -> 3072, 3072 -> 768, 768 -> 768), 1024
tokens, fp16 and bf16; median of CUDA-event timings and the largest difference of the outputs."""
import json, statistics, sys
import torch
from torch.sparse import to_sparse_semi_structured

def timed(fn, repeats=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)

rows = []
for dtype in (torch.float16, torch.bfloat16):
    for out_f, in_f in ((3072, 768), (768, 3072), (768, 768)):
        w = torch.randn(out_f, in_f, device="cuda", dtype=dtype)
        keep = torch.zeros(out_f, in_f // 4, 4, device="cuda", dtype=torch.bool)
        keep.scatter_(-1, w.reshape(out_f, in_f // 4, 4).abs().topk(2, dim=-1).indices, True)
        w = w * keep.reshape(out_f, in_f)
        x = torch.randn(1024, in_f, device="cuda", dtype=dtype)
        sparse = to_sparse_semi_structured(w)
        dense_ms = timed(lambda: torch.nn.functional.linear(x, w))
        sparse_ms = timed(lambda: torch.nn.functional.linear(x, sparse))
        diff = float((torch.nn.functional.linear(x, sparse) - torch.nn.functional.linear(x, w)).abs().max())
        rows.append({"dtype": str(dtype), "shape": [out_f, in_f], "tokens": 1024, "dense_ms": dense_ms,
                     "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms, "max_abs_diff": diff})
        print(f"{dtype} {out_f}x{in_f}: dense {dense_ms:.4f} ms, 2:4 {sparse_ms:.4f} ms, "
              f"x{dense_ms / sparse_ms:.2f}, max diff {diff:.3g}")
json.dump(rows, open(sys.argv[1], "w"), indent=1)
bad = [r for r in rows if r["max_abs_diff"] > 0.5]  # fp16/bf16 sums of 3072 products: a wrong kernel is O(10)
sys.exit(1 if bad else 0)
EOF
check slim_coupled 60 "$PY" -m benchmarks.inference --variants dense coupled --batches 1 8 32 --repeats 5 \
  --out "$OUT_DIR/inference_coupled.json"

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  for mode in multi_gpu fsdp; do
    run_dir="$OUT_DIR/$mode"
    mkdir -p "$run_dir"
    check "accelerate_$mode" 150 env SMART_CHECK_DEVICE=cuda "$PY" -m accelerate.commands.launch \
      --config_file "recipes/accelerate/$mode.yaml" --num_processes 2 --main_process_port $((29600 + RANDOM % 300)) \
      tests/test_ddp_fast_path.py "$run_dir"
    check "same_masks_$mode" 60 "$PY" - "$run_dir" "$mode" <<'EOF'
import sys, torch
out, mode = sys.argv[1], sys.argv[2]
d = [torch.load(f"{out}/rank{r}.pt", weights_only=False) for r in range(2)]
assert [x["world"] for x in d] == [2, 2], "the ranks did not form one process group"
assert torch.equal(d[0]["masks"], d[1]["masks"]), "masks differ across ranks"
if mode == "multi_gpu":  # DDP: the hard stage computes with the clean weight after its first step
    later = [fast for rank in d for step, fast in rank["calls"] if step > 2]
    assert later and all(later), "the hard stage left the clean-weight fast path under DDP"
print(f"{mode}: masks identical on both ranks ({d[0]['masks'].numel()} entries, mean {float(d[0]['masks'].mean())})")
EOF
  done
else
  echo "accelerate (DDP, FSDP2): skipped, $gpus GPU visible (needs 2)" >>"$SUMMARY"
fi
cat "$SUMMARY"
exit $failed
