#!/usr/bin/env bash
# The PixelLM-7B recipe on one GPU with random weights, end to end:
#   1. tools/analysis/benchmark.py on the recipe (bf16, batch 2, sequence 512, gradient
#      checkpointing as configured): step time, samples/s, peak memory, MFU; inference with 3
#      targets; a torch.profiler pass of both;
#   2. random-weight checkpoints (make_random_weights.py) and the demo's MUSE-format data, then
#      tools/train.py for 20 iterations (the recipe's AmpOptimWrapper, bf16), the loss of the first
#      and last iterations, tools/test.py on 4 questions and tools/chat.py one-shot;
#   3. DeepSpeed ZeRO-2 (tools/dist_train.sh ... --deepspeed zero2) for 5 iterations;
#   4. a torch.profiler pass of both benchmark modes, and the benchmark's training step without
#      gradient checkpointing.
# Usage (from the repository root):
#   bash projects/pixellm_7b_random_init/run_gpu_checks.sh [OUT_DIR]
# OUT_DIR (default work_dirs/gpu_checks) receives run.log (what each step printed last),
# benchmark_7b*.json, prof/ (the profiles) and logs.tar.gz (every step's whole log). Each step runs
# even when an earlier one failed, and its exit status is logged. PYTHON picks the interpreter
# (default python3). For a dry run elsewhere: DEVICE (default cuda) for the benchmark and the
# weights; BENCH_OPTIONS / WEIGHT_OPTIONS / TRAIN_OPTIONS add --cfg-options to the benchmark, the
# weights and training (e.g. model.llm.llm_config.num_hidden_layers=2, train_cfg.max_iters=6);
# BENCH_STEPS the benchmark's step counts (default "--steps 10 --warmup 2"); CFG replaces the
# training config.
set -u
OUT=${1:-work_dirs/gpu_checks}
PYTHON=${PYTHON:-python3}
RECIPE=configs/pixellm/pixellm_7b_lora_8xb2_ga10_5k_mix.py
CFG=${CFG:-projects/pixellm_7b_random_init/configs/pixellm_7b_lora_random_muse.py}
DEVICE=${DEVICE:-cuda}
# A fresh folder per run: the loss check and the test read this run's log and checkpoint.
WORK=work_dirs/pixellm_7b_lora_random_muse/$(date +%Y%m%d_%H%M%S)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHON
mkdir -p "$OUT/logs" "$OUT/prof"

step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "=== $name: $*" | tee -a "$OUT/run.log"
    timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    grep -v '^\s*$' "$OUT/logs/$name.log" | tail -n "${TAIL:-20}" >> "$OUT/run.log"
    echo "=== $name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
    tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs
}

step env 60 bash -c "nvidia-smi; $PYTHON -c 'import torch, transformers, peft, mmengine, deepspeed;
print(torch.__version__, torch.cuda.get_device_name(), transformers.__version__, peft.__version__,
mmengine.__version__, deepspeed.__version__)'"

TAIL=45 step benchmark 240 $PYTHON tools/analysis/benchmark.py "$RECIPE" --device "$DEVICE" \
    --dtype bf16 --mode both ${BENCH_STEPS:---steps 10 --warmup 2} --targets 3 \
    --out "$OUT/benchmark_7b.json" ${BENCH_OPTIONS:+--cfg-options $BENCH_OPTIONS}

step weights 180 $PYTHON projects/pixellm_7b_random_init/make_random_weights.py "$RECIPE" \
    --out work_dirs/random_7b --device "$DEVICE" ${WEIGHT_OPTIONS:+--cfg-options $WEIGHT_OPTIONS}
# The CPU demo's dataset (make demo writes the same; an existing one is reused).
step data 120 $PYTHON projects/pixellm_tiny_demo/tools/generate_demo_data.py --out data/muse_demo

TAIL=12 step train 300 $PYTHON tools/train.py "$CFG" --work-dir "$WORK" \
    ${TRAIN_OPTIONS:+--cfg-options $TRAIN_OPTIONS}
step loss 30 $PYTHON - "$WORK" <<'EOF'
import glob, json, sys
logs = sorted(glob.glob(f'{sys.argv[1]}/*/vis_data/scalars.json'))
rows = [json.loads(line) for line in open(logs[-1])]
loss = [r['loss'] for r in rows if 'loss' in r]
print(f'{len(loss)} iterations; loss first 3 {[round(x, 3) for x in loss[:3]]}, '
      f'last 3 {[round(x, 3) for x in loss[-3:]]}')
first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
print(f'mean of the first 5 {first:.3f}, of the last 5 {last:.3f}: '
      + ('FALLS' if last < first else 'DOES NOT FALL'))
sys.exit(0 if last < first else 1)
EOF

CKPT=$(cat "$WORK/last_checkpoint" 2>/dev/null)
step test 240 $PYTHON tools/test.py "$CFG" "$CKPT" --work-dir "$WORK"
IMAGE=$(ls data/muse_demo/images | head -n 1)
step chat 180 $PYTHON tools/chat.py "$CFG" "$CKPT" --image "data/muse_demo/images/$IMAGE" \
    --question 'Which objects are red? Please output segmentation masks.' --precision bf16 \
    --max-new-tokens 64 --out-dir "$WORK/chat"

TAIL=12 step deepspeed_zero2 300 bash tools/dist_train.sh "$CFG" 1 --deepspeed zero2 \
    --work-dir "${WORK}_zero2" --cfg-options train_cfg.max_iters=5 \
    default_hooks.checkpoint.save_last=False ${TRAIN_OPTIONS:-}
# Where the time goes: torch.profiler over both modes (last: it can take minutes).
TAIL=20 step profile 300 $PYTHON tools/analysis/benchmark.py "$RECIPE" --device "$DEVICE" \
    --dtype bf16 --mode both --steps 1 --warmup 1 --targets 3 --profile "$OUT/prof" \
    ${BENCH_OPTIONS:+--cfg-options $BENCH_OPTIONS}
# What gradient checkpointing costs: the training step without it.
TAIL=20 step benchmark_no_checkpointing 150 $PYTHON tools/analysis/benchmark.py "$RECIPE" \
    --device "$DEVICE" --dtype bf16 --mode train ${BENCH_STEPS:---steps 10 --warmup 2} \
    --targets 3 --out "$OUT/benchmark_7b_no_checkpointing.json" --cfg-options \
    model.llm.gradient_checkpointing=False ${BENCH_OPTIONS:-}
echo "=== done" | tee -a "$OUT/run.log"
