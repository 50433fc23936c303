#!/usr/bin/env bash
# The claims study's missing runs (benchmarks/claims.py) and the U-Net pair of the Table-5 study
# (benchmarks/unet_study.py) on one lent GPU, in one call of under 10 minutes:
# every run trains in its own process, all at once (batch 64 leaves the GPU mostly idle; CUDA MPS, where the
# driver has it, lets their small kernels overlap), and each run is evaluated (solver sweep, test points,
# guidance sweeps at NFE 6, 8 and 32; U-Net: GM-SDE 2 and the FM baselines at NFE 10-100) as soon as its
# training ends, until the time budget is spent. What was
# measured comes back; what was not is finished later with the same commands, which skip every point
# already measured.
#
#   bash benchmarks/gpu_claims.sh prepare     # here: wheels (.whl), the run lists and the float16 copies of the
#                                             # trained runs (.gpu_carry), the large checkpoints out of the tree
#   run(command="set -o pipefail; bash benchmarks/gpu_claims.sh 2>&1 | tee $OUT/run.log",
#       carry=[".whl", ".gpu_carry"], timeout_s=600)              # the device tool
#   bash benchmarks/gpu_claims.sh restore     # here, at once: the large checkpoints back into the tree
#   bash benchmarks/gpu_claims.sh unpack DIR  # here: what came back (DIR = the call's files_at) into the work dir
#
#   DEVICE=cpu WORK_DIR=/tmp/w ITERATIONS=4 LATENT_ITERATIONS=4 LATENT_EVERY=2 BUDGET=300 \
#     EVAL_ARGS="--nfes 4 --num-samples 20 --solver-samples 20 --pg-scales 0 0.1 --cfg-scales 1 2" \
#     PREPARE_ARGS="--vae-iterations 5" UNET_WORK_DIR=/tmp/u UNET_EVAL_ARGS="--nfes 10 --num-samples 20" \
#     bash benchmarks/gpu_claims.sh   # a dry run on a CPU (WORK_DIR holds copies of the classifiers and the VAE)
#
# A call's working tree may hold at most 64 MiB and at most 64 MiB come back (8 files of 16 MiB), so the
# committed full checkpoints (about 30 MB each) stay behind: `prepare` moves them to .gpu_stash/ (ignored)
# and puts float16 EMA-only copies of the trained runs in .gpu_carry/, which the device evaluates; each run
# the device trains is reduced to its float16 EMA weights (`gmfm.training.slim_checkpoint`) BEFORE it is
# evaluated, so the checkpoint that comes back is exactly what its points were measured on.
set -u
here=$(pwd)
W=${WORK_DIR:-benchmarks/runs/claims}
UW=${UNET_WORK_DIR:-benchmarks/runs/unet}
UNET_RUNS=${UNET_RUNS-gmflow fm}  # the U-Net pair (unconditional, colour testbed); UNET_RUNS= leaves it out
ALL_RUNS="colored_mnist:gmflow:0 colored_mnist:fm:0 colored_mnist:gmflow:1 colored_mnist:fm:1 mnist:gmflow:1 mnist:fm:1
mnist_latent:gmflow:0 mnist_latent:fm:0 mnist_latent:gmflow:1 mnist_latent:fm:1 mnist:gmflow:0 mnist:fm:0
mnist:gmflow_draws8:0 colored_mnist:gmflow_draws8:0"  # the last two: a GMFlow lever at equal cost per pixel testbed
# Python: the project's venv here (prepare), the machine's python3 there.
[ "${1:-run}" = prepare ] && PY=${PYTHON:-.venv/bin/python} || PY=${PYTHON:-python3}
slim16() {  # slim16 RUN_OR_FILE OUT: its float16 EMA weights (gmfm.training.slim_checkpoint)
  $PY -c "import sys, torch; from gmfm.training import slim_checkpoint as s; s(sys.argv[1], sys.argv[2], torch.float16)" \
    "$1" "$2"
}
finished() {  # finished CHECKPOINT: trained to its recipe's iterations
  [ -f "$1" ] && $PY -c "import sys; from gmfm.training import read_checkpoint_metadata as r; m = r(sys.argv[1]); \
sys.exit(m['step'] < m['train_config']['iterations'])" "$1"
}
case ${1:-run} in
prepare)
  grep -qx '/.gpu_stash/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu_carry/\n/.gpu_stash/\n' >> .git/info/exclude
  [ -d .whl ] || $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 mlxtend==0.25.0 importlib_metadata==10.2.0 || exit 1
  rm -rf .gpu_carry; mkdir -p .gpu_carry; : > .gpu_carry/train.txt
  for r in $ALL_RUNS; do
    IFS=: read -r tb v seed <<< "$r"
    # Trained here to its planned iterations: the device evaluates it. A run stopped part way is trained again
    # there from the start (minutes on a GPU), which the unpacked result then replaces.
    if finished $W/$tb/${v}_s$seed/checkpoint.safetensors; then
      slim16 $W/$tb/${v}_s$seed .gpu_carry/${tb}__${v}_s$seed.safetensors || exit 1
    else
      echo "$tb $v $seed" >> .gpu_carry/train.txt
    fi
  done
  for v in $UNET_RUNS; do  # the U-Net study's runs: the same, under the testbed name "unet"
    if finished $UW/$v/checkpoint.safetensors; then slim16 $UW/$v .gpu_carry/unet__$v.safetensors || exit 1
    else echo "unet $v 0" >> .gpu_carry/train.txt; fi
  done
  git ls-files -z | xargs -0 -I{} find {} -size +5M | while read -r f; do
    mkdir -p .gpu_stash/$(dirname "$f") && mv "$f" .gpu_stash/"$f"
  done
  echo "to train: $(wc -l < .gpu_carry/train.txt) runs; to evaluate: $(ls .gpu_carry/*.safetensors | wc -l)"
  du -sh .whl .gpu_carry .gpu_stash; exit 0 ;;
restore)
  [ -d .gpu_stash ] && (cd .gpu_stash && find . -type f) | while read -r f; do mv ".gpu_stash/$f" "$f"; done
  rm -rf .gpu_stash; git status --short | head; exit 0 ;;
unpack)
  cat "$2"/claims_gpu.tgz.part* | tar xzf - || exit 1
  cp "$2"/run.log outputs/gpu_claims_run.log 2>/dev/null; exit 0 ;;
run) ;;
*) echo "usage: $0 [prepare|run|restore|unpack DIR]"; exit 2 ;;
esac
if [ -d .whl ] && ! python3 -c "import diffusers, mlxtend" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$here:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DEV=${DEVICE:-cuda}
BUDGET=${BUDGET:-520}              # seconds from the start until every process is stopped and the results packed
TRAIN_BUDGET=${TRAIN_BUDGET:-400}  # a training still running then is stopped (checkpoint kept, not evaluated)
LATENT_ITERATIONS=${LATENT_ITERATIONS:-9000}  # the latent plateau (seed 0's curve); chunks, a val FD after each
LATENT_EVERY=${LATENT_EVERY:-1000}
L=outputs/gpu_claims/logs
rm -rf $L; mkdir -p $L
marker=$(mktemp)  # what is newer comes back
start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
left() { local s=$(( $1 - $(now) )); [ $s -gt 1 ] && echo $s || echo 1; }
CLAIMS="python3 -m benchmarks.claims --device $DEV --work-dir $W"
UNET="python3 -m benchmarks.unet_study --device $DEV --work-dir $UW --claims-work-dir $W"
folder() { [ $1 = unet ] && echo $UW/$2 || echo $W/$1/$2; }  # folder TESTBED RUN
evaluate() {  # evaluate TESTBED RUN LOG: every stage not yet measured, until the budget is spent
  if [ $1 = unet ]; then timeout $(left $BUDGET) $UNET evaluate $2 ${UNET_EVAL_ARGS:-} > $3 2>&1
  else timeout $(left $BUDGET) $CLAIMS evaluate $1 $2 --stages solvers test guidance --guidance-nfes 6 8 32 \
    ${EVAL_ARGS:-} > $3 2>&1; fi
}

if [ "$DEV" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
    mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
    if nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"
    then echo "MPS on"
    else
      echo quit | timeout 10 nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      echo "MPS failed: off"
    fi
  else
    echo "MPS: no nvidia-cuda-mps-control"
  fi
fi
python3 -c "import torch, gmfm; print('torch', torch.__version__, torch.cuda.is_available())" || exit 1

job() {  # testbed variant seed: train (latent: in chunks), slim, evaluate
  local tb=$1 v=$2 seed=$3 name=${2}_s$3 rc
  local log=$L/${1}_${2}_s$3
  [ $tb = unet ] && name=$v  # one seed (the recipe's), named without it
  local dir=$(folder $tb $name)
  # A stale folder (points, curve) of a run without a finished checkpoint, but what an earlier budget measured
  # (points_it<iteration>/, log_it<iteration>.csv) stays.
  [ -d $dir ] && find $dir -mindepth 1 -maxdepth 1 ! -name 'points_it*' ! -name '*_it*.csv' -exec rm -rf {} +
  if [ $tb = unet ]; then
    timeout $(left $TRAIN_BUDGET) $UNET train $v ${ITERATIONS:+--iterations $ITERATIONS} > $log.train 2>&1
  elif [ $tb = mnist_latent ]; then
    timeout $(left $TRAIN_BUDGET) $CLAIMS curve $tb $v --seed $seed \
      --every $LATENT_EVERY --patience 1000 --max-iterations $LATENT_ITERATIONS --num-samples 500 > $log.train 2>&1
  else
    timeout $(left $TRAIN_BUDGET) $CLAIMS train $tb $v --seed $seed \
      ${ITERATIONS:+--iterations $ITERATIONS} > $log.train 2>&1
  fi
  rc=$?
  if [ $rc != 0 ]; then echo "$tb $name: training stopped after $(now) s (exit $rc)"; return; fi
  slim16 $dir/checkpoint.safetensors $dir/checkpoint.safetensors || { echo "$tb $name: slim failed"; return; }
  echo "$tb $name: trained after $(now) s"
  evaluate $tb $name $log.eval
  echo "$tb $name: evaluation exit $? after $(now) s ($(ls $dir/points/*.json 2>/dev/null | wc -l) points)"
}

# Runs to train (.gpu_carry/train.txt, written by `prepare`; without it, every run of the study).
if [ -f .gpu_carry/train.txt ]; then TRAIN=$(cat .gpu_carry/train.txt)
else
  TRAIN=$(echo $ALL_RUNS | tr ' :' '\n ' | grep -v '^mnist [a-z]* 0$'; for v in $UNET_RUNS; do echo "unet $v 0"; done)
fi
# (Loops read here-strings, not pipes: a piped loop runs in a subshell, whose jobs `wait` does not see.)
while read -r tb v seed; do
  [ -n "$tb" ] && job $tb $v $seed &
done <<< "$(echo "$TRAIN" | grep -v '^mnist_latent ')"
(  # the latent testbed's cache from the committed VAE (the VAE itself is trained once and committed), then its runs
  timeout $(left 150) $CLAIMS prepare-latents ${PREPARE_ARGS:-} > $L/prepare_latents.log 2>&1
  echo "latent cache: exit $? after $(now) s"
  while read -r tb v seed; do
    [ -n "$tb" ] && job $tb $v $seed &
  done <<< "$(echo "$TRAIN" | grep '^mnist_latent ')"
  wait
) &
# The runs trained elsewhere (float16 copies in .gpu_carry/<testbed>__<run>.safetensors): every stage not yet
# measured, once the trainings are over, so that they do not slow them down.
for f in .gpu_carry/*__*.safetensors; do
  [ -f "$f" ] || continue
  base=${f##*/}; base=${base%.safetensors}; tb=${base%%__*}; run=${base#*__}
  (
    dir=$(folder $tb $run); mkdir -p $dir && cp "$f" $dir/checkpoint.safetensors
    sleep 30  # the trainings have started
    training="[b]enchmarks\.(claims|unet_study) --device $DEV --work-dir [^ ]+ (--claims-work-dir [^ ]+ )?(train|curve)"
    while pgrep -f "$training" >/dev/null && [ $(now) -lt $TRAIN_BUDGET ]; do
      sleep 5
    done
    evaluate $tb $run $L/${tb}_$run.eval
    echo "$tb $run: evaluation exit $? after $(now) s"
  ) &
done
wait
echo "all done after $(now) s"
[ "$DEV" = cuda ] && [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | timeout 10 nvidia-cuda-mps-control

# Pack: every run folder without the full checkpoints of unfinished runs (too large to come back).
if [ -n "${OUT:-}" ]; then
  list=$(mktemp)
  find $W $UW -type f ! -name '*.lock' ! -path '*/cache/*' -newer $marker 2>/dev/null |
  while read -r f; do
    if [ "${f##*/}" = checkpoint.safetensors ] && cmp -s "$f" .gpu_carry/"$(basename $(dirname $(dirname "$f")))__$(basename $(dirname "$f"))".safetensors; then continue; fi
    if [ "${f##*/}" = checkpoint.safetensors ] &&
       ! python3 -c "import sys; from gmfm.training import read_checkpoint_metadata as r; sys.exit(r(sys.argv[1]).get('weights_dtype') != 'float16')" "$f"
    then continue; fi
    echo "$f"
  done > $list
  find $L -type f >> $list
  tar czf /tmp/claims_gpu.tgz -T $list
  split -b 15m -d /tmp/claims_gpu.tgz $OUT/claims_gpu.tgz.part
  ls -la $OUT
fi
