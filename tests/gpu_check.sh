#!/bin/sh
# The GPU check: prints the figures of the README's "GPU check" in at most 8 minutes of one GPU,
# every step under `timeout` (the limits add up to 480 s). Run it from anywhere:
#     sh tests/gpu_check.sh 2>&1 | tee gpu_check.txt
# GPU_CHECK_TINY=1 runs the same steps at a tiny size, so that a CPU can prove the script works;
# its numbers mean nothing. Exit status: the number of steps that failed or ran out of time.
cd "$(dirname "$0")/.." || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# one cold compile cache for the whole check: the compiled table's "1st step s" is compile time
export TORCHINDUCTOR_CACHE_DIR="$work/inductor"
if [ -n "$GPU_CHECK_TINY" ]; then
    model="--size Ti/16 --img-size 32 --frames 2 --batch-size 2 --patches 2 --warmup 1 --repeats 2"
    variants="vit KV pKV"
    tries="--variants vit $model"
    rest="QKV"
    videos="'$work/videos', train_per_class=4, val_per_class=1, num_frames=8, size=32"
    recipe="--size Ti/16 --img-size 32 --frames 2 --patches 2 --batch-size 2 --workers 2"
else  # bench.py's GPU defaults: B/16, 8 frames of 224 px, batch 21 (the paper's), bf16
    model="--repeats 10"
    variants="vit tokenshift KV QKV pKV"  # the goal's; compiled first, in case time runs out
    rest="Q K V QK QV pQ pK pV pQK pQV pQKV"
    tries="--variants vit --repeats 10"
    videos="train.SYNTHETIC_DIR, **train.SYNTHETIC_VIDEOS"  # made once, kept in .cache
    recipe=""  # train.py's paper recipe: B/16, 8 x 224, 21 x 10 clips, bf16, 8 workers
fi
failed=0

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under `timeout`, says how it ended
    name=$1 limit=${GPU_CHECK_TINY:+300}
    limit=${limit:-$2}
    shift 2
    echo "== $name (limit ${limit}s)"
    start=$(date +%s)
    timeout "$limit" "$@"
    code=$?
    [ "$code" -eq 0 ] || { failed=$((failed + 1)); echo "== $name: FAILED (exit $code)"; }
    echo "== $name: $(($(date +%s) - start)) s"
}

step "machine" 5 sh -c 'nvidia-smi --query-gpu=name,driver_version --format=csv,noheader \
    || echo "no nvidia-smi"; python -c "import torch; print(\"torch\", torch.__version__)"'
# $model and the lists stay unquoted: each is several words on purpose
# shellcheck disable=SC2086
step "eager, every variant, and ViT as the authors ran it (fp32, math attention)" 60 \
    python bench.py $model --variants $variants $rest --against-authors \
    --json "$work/eager.json"
# shellcheck disable=SC2086
step "compiled (vit.compile_blocks); 1st step s = compile time, cold cache" 90 \
    python bench.py $model --variants $variants --compile
# shellcheck disable=SC2086
step "compiled, the other variants" 80 \
    python bench.py $model --variants vit $rest --compile
# shellcheck disable=SC2086
step "compiled vit, max-autotune" 45 python bench.py $tries \
    --compile-mode max-autotune-no-cudagraphs
# shellcheck disable=SC2086
step "compiled vit, CUDA graphs" 35 python bench.py $tries --compile-mode reduce-overhead
for optimizer in sgd sgd-fused; do  # the paper's optimizer, in the full step
    # shellcheck disable=SC2086
    step "eager vit with the $optimizer step" 20 python bench.py $tries \
        --optimizer-step "$optimizer"
done
step "synthetic videos" 40 python -c "import prepare, train; prepare.make_synthetic($videos)"
dir=$(python -c "import train; print(train.SYNTHETIC_DIR)")
[ -n "$GPU_CHECK_TINY" ] && dir="$work/videos"
# shellcheck disable=SC2086
step "train.py end to end, pKV, 3 epochs (persistent workers)" 80 python train.py --variant pKV \
    --data "$dir" --out "$work/run" --epochs 3 --lr 0.001 $recipe
step "end to end against the model alone" 5 python -c "
import csv, json
last = list(csv.DictReader(open('$work/run/log.csv')))[-1]
alone = {r['variant']: r['clips_per_s'] for r in json.load(open('$work/eager.json'))['rows']}
share = float(last['clips_per_s']) / alone['pKV']
print(f\"train.py epoch {last['epoch']}: {last['clips_per_s']} clips/s, {share:.0%} of pKV alone\")"
echo "== done: $failed steps failed"
exit "$failed"
