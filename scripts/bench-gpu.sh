#!/usr/bin/env bash
# The GPU benchmarks of docs/performance.md: embedding training (issue 3) and generation (issue 4) on the
# full SD 1.5 and SD 2.0 architectures with random weights at 512 px, built offline from their configs.
#
#   scripts/bench-gpu.sh OUT_DIR [train|compile|script|generate|all] [path/to/textual_inversion.py]
#
# Each benchmark prints its table and writes its figures to OUT_DIR/*.json; a failing one is reported and
# the rest still run. Each group but `all` takes under ten minutes on one H100 (`compile` compiles three
# times, about 2.5 minutes each); issue 3's targets are decided by `script` and `compile`. The optional script is diffusers' examples/textual_inversion/textual_inversion.py
# (it needs accelerate and torchvision), run as the baseline in place of the built-in one.
# MEDTI names the command (default: medti; e.g. MEDTI="python -m medti.cli" on a machine without the install).
set -uo pipefail
out=${1:?usage: scripts/bench-gpu.sh OUT_DIR [train|compile|script|generate|all] [textual_inversion.py]}
what=${2:-all}
script=${3:-}
medti=${MEDTI:-medti}
mkdir -p "$out"
failed=0

bench() {  # bench NAME ARGS...: one benchmark, its output kept in OUT_DIR/NAME.log
  local name=$1; shift
  echo "== $name: $medti bench $*"
  if ! $medti bench "$@" 2>&1 | tee "$out/$name.log"; then
    echo "!! $name failed (see $out/$name.log)"
    failed=$((failed + 1))
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

if [[ $what == train || $what == all ]]; then
  bench train-all train --models tiny small sd15 sd2 --steps 40 --warmup 5 --json "$out/train.json"
  bench train-fp16 train --models sd15 --precision fp16 --steps 40 --warmup 5 --json "$out/train-fp16.json"
  bench train-ckpt train --models sd15 sd2 --gradient-checkpointing --no-baseline --steps 30 --warmup 3 \
    --json "$out/train-ckpt.json"
fi
if [[ $what == compile || $what == all ]]; then
  bench train-compile train --models sd15 --compile --no-baseline --steps 40 --warmup 10 \
    --json "$out/train-compile.json"
  bench train-compile-budget train --models sd15 sd2 --compile --compile-memory-budget 0.3 --no-baseline \
    --steps 40 --warmup 10 --json "$out/train-compile-budget.json"
fi
if [[ ($what == script || $what == all) && -n $script ]]; then
  bench train-script train --models sd15 sd2 --diffusers-script "$script" --steps 40 --warmup 5 \
    --json "$out/train-script.json"
  # the script with its own default precision (fp32: its README's command sets no --mixed_precision)
  bench train-script-fp32 train --models sd15 --diffusers-script "$script" --script-args "--mixed_precision no" \
    --steps 40 --warmup 5 --json "$out/train-script-fp32.json"
fi
if [[ $what == generate || $what == all ]]; then
  for arch in sd15 sd2; do
    bench "generate-$arch" generate --base-model "random:$arch" --n 32 --steps 20 --batch-size 16 \
      --json "$out/generate-$arch.json"
    bench "generate-$arch-fp16" generate --base-model "random:$arch" --n 32 --steps 20 --batch-size 16 \
      --diffusers-precision fp16 --only diffusers --json "$out/generate-$arch-fp16.json"
  done
fi
exit $((failed > 0))
