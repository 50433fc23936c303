#!/usr/bin/env bash
# The MNIST study, the MNIST benchmark with the study's best recipe and the GPU step-time benchmark on one
# lent GPU, as two short calls (the machine has PyTorch but neither diffusers nor mlxtend: their wheels travel
# in .whl/, see benchmarks/README.md). Every variant trains in its own process, all at once: at batch 64 the
# GPU is mostly idle and the step time is Python and kernel-launch overhead.
#
#   bash benchmarks/gpu_session.sh study   # a 40-iteration CUDA smoke check, then every variant (3,800 x 64, as
#                                          # on the CPU) trained at once, evaluated, reported
#   bash benchmarks/gpu_session.sh bench   # bench_mnist.py on the study's best GMFlow variant and its FM run;
#                                          # bench_scaling.py on CUDA (DiT-S/2, B/2; GMFlow vs FM)
# Results land in outputs/gpu/results (and in $OUT as one archive when $OUT is set).
set -u
stage=${1:-study}
here=$(pwd)
if [ -d .whl ] && ! python3 -c "import diffusers, mlxtend" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$here:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
W=outputs/gpu/mnist_study
R=outputs/gpu/results
mkdir -p $W $R/logs
[ -f .gpu_carry/classifier.pt ] && [ ! -f $W/classifier.pt ] && cp .gpu_carry/classifier.pt $W/classifier.pt
VARIANTS=${VARIANTS:-"gmflow fm ratio0.9 ratio1.0 k2 k1 draws8 clip1000 p2 fm_p2 p2+draws8"}
DEV=${DEVICE:-cuda}   # DEVICE=cpu runs the same stages on a CPU (a dry run of the script)
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

pack() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_$stage.tgz" --exclude='*.safetensors' --exclude='*.lock' outputs/gpu
  fi
}

smoke() {  # 20 iterations of GMFlow and FM on CUDA and a few samples with each solver: fail fast
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
  S=outputs/gpu/smoke
  python3 - "$S" "$DEV" <<'PY' 2>&1 | tail -n 20
import sys, time, torch
from pathlib import Path
from benchmarks.mnist_study import recipe_of
from gmfm.experiments import load_run, sample_trained, train_recipe
work = Path(sys.argv[1])
print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", flush=True)
for name, solvers in (("gmflow", ("gmode2", "gmsde2", "euler")), ("fm", ("dpmpp2m",))):
    tic = time.perf_counter()
    train_recipe(recipe_of(name, sys.argv[2], 40), work / name, progress=False)
    print(name, "40 iterations:", round(time.perf_counter() - tic, 1), "s", flush=True)
    trained = load_run(work / name, device=sys.argv[2])
    for solver in solvers:
        x = sample_trained(trained, solver, 4, labels=torch.arange(10), device=sys.argv[2])
        assert x.shape == (10, 1, 32, 32) and bool(torch.isfinite(x).all()), solver
        print(name, solver, "ok", flush=True)
PY
  return ${PIPESTATUS[0]}
}

case $stage in
study)
  smoke || { echo "smoke failed after $(elapsed) s"; pack; exit 1; }
  echo "smoke ok after $(elapsed) s"
  for v in $VARIANTS; do
    timeout ${TRAIN_TIMEOUT:-270} python3 -m benchmarks.mnist_study train --variants $v --device $DEV --work-dir $W ${ITERATIONS:+--iterations $ITERATIONS} \
      > "$R/logs/train_$v.log" 2>&1 &
  done
  wait
  echo "trained after $(elapsed) s"; for v in $VARIANTS; do echo "$v: $(tail -n 1 "$R/logs/train_$v.log")"; done
  for v in $VARIANTS; do
    timeout ${EVAL_TIMEOUT:-120} python3 -m benchmarks.mnist_study evaluate --variants $v --device $DEV --work-dir $W --per-class ${PER_CLASS:-50} \
      > "$R/logs/eval_$v.log" 2>&1 &
  done
  wait
  echo "evaluated after $(elapsed) s"
  python3 -m benchmarks.mnist_study report --variants $VARIANTS --work-dir $W --out $R --device $DEV 2>&1 | tail -n 30
  for v in $VARIANTS; do cp "$W/$v/grid_nfe8.png" "$R/grid_$v.png" 2>/dev/null; cp "$W/$v/log.csv" "$R/logs/log_$v.csv" 2>/dev/null; done
  echo "study: done after $(elapsed) s"
  pack
  ;;
bench)
  best=$(python3 -c "
import json; t = json.load(open('$R/mnist_study.json'))['table']
print(min((r['best FD @8'], n) for n, r in t.items() if not n.startswith('fm'))[1])")
  echo "best GMFlow variant at NFE 8: $best"
  timeout 330 python3 -m benchmarks.bench_mnist --device $DEV --gm-run "$W/$best" --fm-run $W/fm \
    --work-dir $W --out $R/bench --per-class ${BENCH_PER_CLASS:-100} > $R/logs/bench_mnist.log 2>&1
  echo "bench_mnist: exit $? after $(elapsed) s"; tail -n 25 $R/logs/bench_mnist.log
  OMP_NUM_THREADS=4 timeout 200 python3 -m benchmarks.bench_scaling --device $DEV --processes 1 --iterations ${SCALING_ITERATIONS:-30} \
    --batch-size 512 --configs imagenet_gmflow_k8_s2 imagenet_fm_s2 imagenet_gmflow_k8_b2 imagenet_fm_b2 \
    --out $R > $R/logs/bench_scaling.log 2>&1
  echo "bench_scaling: exit $? after $(elapsed) s"; tail -n 15 $R/logs/bench_scaling.log
  pack
  ;;
esac
