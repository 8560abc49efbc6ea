# Shared by the table scripts: settings from the environment and a small job pool.
#   TRIALS   trials per student (default 3)
#   GPUS     space-separated GPU ids; one job runs per GPU at a time (default "0"; CPU if none)
#   SAVE     save folder (default ./save)      DATA  data folder (default ./data)
#   DRY_RUN  1: print the commands instead of running them
#   EXTRA    flags appended to every command (e.g. "--epochs 2" for a smoke test)
# Lines starting with '#' that a script prints (note) say which teacher checkpoint and which
# metric its table uses; they are printed in both modes and are not commands.
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

# note TEXT...: print one '# TEXT' line (which checkpoint a table distils from, its metric).
note() {
  echo "# $*"
}

# teacher_path MODEL DATASET [best|last] [TRIAL]: a checkpoint train_teacher.py writes: best.pth
# (the best epoch's weights) or last.pth (the last epoch's, as RepDistiller's
# ckpt_epoch_240.pth); trial 0 unless given.
teacher_path() {
  local ckpt=${3:-best}
  case "$ckpt" in best|last) ;; *) echo "teacher_path: best or last, not $ckpt" >&2; return 2 ;; esac
  echo "$SAVE/teachers/$1_vanilla_$2_trial_${4:-0}/$ckpt.pth"
}

# student_path STUDENT TEACHER DATASET METHOD CLS DIV BETA TRIAL [best|last]: a checkpoint
# train_student.py writes (helper/run_folder.py's student_run_name; the weights as Python's
# '{:g}' prints them, e.g. 15, 0.5, 0).
student_path() {
  echo "$SAVE/students/S:$1_T:$2_$3_$4_r:$5_a:$6_b:$7_$8/${9:-best}.pth"
}
