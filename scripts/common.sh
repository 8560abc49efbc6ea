# Shared by the table scripts: settings from the environment and a small job pool.
#   TRIALS   trials per student (default 3)
#   GPUS     space-separated GPU ids; one job runs per GPU at a time (default "0"; CPU if none)
#   SAVE     save folder (default ./save)      DATA  data folder (default ./data)
#   DRY_RUN  1: print the commands instead of running them
#   EXTRA    flags appended to every command (e.g. "--epochs 2" for a smoke test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRIALS=${TRIALS:-3}
read -r -a GPU_LIST <<< "${GPUS:-0}"
SAVE=${SAVE:-./save}
DATA=${DATA:-./data}
DRY_RUN=${DRY_RUN:-0}
EXTRA=${EXTRA:-}
_next_gpu=0

# job python SCRIPT ARGS...: run on the next free GPU, in the background when several GPUs.
job() {
  local gpu=${GPU_LIST[$((_next_gpu % ${#GPU_LIST[@]}))]}
  _next_gpu=$((_next_gpu + 1))
  if [ "$DRY_RUN" = 1 ]; then
    echo "$* --save_folder $SAVE --data_folder $DATA $EXTRA"
    return
  fi
  if [ "${#GPU_LIST[@]}" -gt 1 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "${#GPU_LIST[@]}" ]; do wait -n; done
    CUDA_VISIBLE_DEVICES=$gpu "$@" --save_folder "$SAVE" --data_folder "$DATA" $EXTRA &
  else
    CUDA_VISIBLE_DEVICES=$gpu "$@" --save_folder "$SAVE" --data_folder "$DATA" $EXTRA
  fi
}

# barrier: wait for every running job (teachers before their students).
barrier() {
  [ "$DRY_RUN" = 1 ] || wait
}

# teacher_path MODEL DATASET: where train_teacher.py writes MODEL's best checkpoint.
teacher_path() {
  echo "$SAVE/teachers/$1_vanilla_$2_trial_0/best.pth"
}
