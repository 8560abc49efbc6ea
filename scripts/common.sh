# Shared by the table scripts: settings from the environment and a small job pool.
#   TRIALS   trials per student (default 3)
#   GPUS     space-separated GPU ids; one job runs per GPU at a time (default "0"; CPU if none)
#   SAVE     save folder (default ./save)      DATA  data folder (default ./data)
#   DRY_RUN  1: print the commands instead of running them
#   EXTRA    flags appended to every command (e.g. "--epochs 2" for a smoke test)
#   ZOO      1: a teacher a release publishes is fetched instead of trained (default); 0: train
#   LAUNCHER local (default): the pool below; slurm: every command becomes an sbatch job at the
#            script's end (helper/slurm.py: SLURM_PARTITION, SLURM_ACCOUNT, SLURM_TIME,
#            SLURM_GPUS_PER_JOB, SLURM_CPUS_PER_JOB, SLURM_NODES, SBATCH_OPTIONS); students wait
#            for their teacher's job (afterok), trials of a row form a job array, barrier waits
#            for nothing. With DRY_RUN=1 the same commands are printed, then '# slurm:' lines.
#   STATUS   1: run nothing; list each row of the table: done / running / queued / failed / not
#            started (python -m helper.table status)
# Lines starting with '#' that a script prints (note) say which teacher checkpoint and which
# metric its table uses; they are printed in both modes and are not commands.
#
# The teacher step: every 'job python train_teacher.py' of trial 0 (or a named trial, such as
# reviewkd) is a teacher, and its run folder decides what happens, printed as one '# teacher'
# line: "found" (a finished run, or a published teacher already there: nothing runs), "fetched"
# (python -m helper.teachers fetch, when a release publishes that model for that data set:
# `python -m helper.teachers list --plain`; trial 0 only; a failed fetch falls back to
# training), "trained" (with --resume when an unfinished run is there). Student baselines (a
# numbered trial) always train. At the end one '# teachers:' line sums it up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRIALS=${TRIALS:-3}
read -r -a GPU_LIST <<< "${GPUS:-0}"
SAVE=${SAVE:-./save}
DATA=${DATA:-./data}
DRY_RUN=${DRY_RUN:-0}
EXTRA=${EXTRA:-}
ZOO=${ZOO:-1}
LAUNCHER=${LAUNCHER:-local}
STATUS=${STATUS:-0}
case "$LAUNCHER" in local|slurm) ;; *) echo "LAUNCHER: local or slurm, not $LAUNCHER" >&2; exit 2 ;; esac
_next_gpu=0
_plan=""  # the commands recorded for the slurm launcher or STATUS=1, one shell-quoted a line
if [ "$LAUNCHER" = slurm ] || [ "$STATUS" = 1 ]; then
  _plan=$(mktemp "${TMPDIR:-/tmp}/kd_table_plan.XXXXXX")
fi
_plan_save=$SAVE

# _record ARGS...: add one command to the plan.
_record() {
  printf '%q ' "$@" >> "$_plan"
  echo >> "$_plan"
}

# job python SCRIPT ARGS...: run on the next free GPU, in the background when several GPUs.
# A teacher (see the teacher step above) may be found or fetched instead.
job() {
  if [ "$STATUS" = 1 ]; then
    _record "$@" --save_folder "$SAVE" --data_folder "$DATA" $EXTRA
    return
  fi
  if [ "${1-}" = python ] && [ "${2-}" = train_teacher.py ]; then
    _teacher_step "${@:3}" || return 0
    [ -z "$_resume" ] || set -- "$@" --resume
  fi
  local gpu=${GPU_LIST[$((_next_gpu % ${#GPU_LIST[@]}))]}
  _next_gpu=$((_next_gpu + 1))
  if [ "$LAUNCHER" = slurm ]; then  # submitted at the end (_launch)
    _record "$@" --save_folder "$SAVE" --data_folder "$DATA" $EXTRA
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "$* --save_folder $SAVE --data_folder $DATA $EXTRA"
    return
  fi
  [ "$LAUNCHER" = local ] || return 0
  if [ "${#GPU_LIST[@]}" -gt 1 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "${#GPU_LIST[@]}" ]; do wait -n; done
    CUDA_VISIBLE_DEVICES=$gpu "$@" --save_folder "$SAVE" --data_folder "$DATA" $EXTRA &
  else
    CUDA_VISIBLE_DEVICES=$gpu "$@" --save_folder "$SAVE" --data_folder "$DATA" $EXTRA
  fi
}

# barrier: wait for every running job (teachers before their students).
barrier() {
  [ "$DRY_RUN" = 1 ] || [ "$LAUNCHER" != local ] || [ "$STATUS" = 1 ] || wait
}

# note TEXT...: print one '# TEXT' line (which checkpoint a table distils from, its metric).
note() {
  echo "# $*"
}

# teacher_path MODEL DATASET [best|last] [TRIAL]: a checkpoint train_teacher.py writes: best.pth
# (the best epoch's weights) or last.pth (the last epoch's, as RepDistiller's
# ckpt_epoch_240.pth); trial 0 unless given. A published teacher has best.pth only, holding its
# release's final weights (mdistiller's are RepDistiller's ckpt_epoch_240.pth): it serves for
# last too.
teacher_path() {
  local ckpt=${3:-best}
  case "$ckpt" in best|last) ;; *) echo "teacher_path: best or last, not $ckpt" >&2; return 2 ;; esac
  local folder="$SAVE/teachers/$1_vanilla_$2_trial_${4:-0}"
  if [ "$ckpt" = last ] && { _published_here "$folder" || _fetched "$1 $2 trial ${4:-0}"; }; then
    ckpt=best
  fi
  echo "$folder/$ckpt.pth"
}

# ---- the teacher step ----------------------------------------------------------------------
_fetched_list=() _found_list=() _trained_list=() _zoo_list="" _zoo_read=0 _resume=""

# _arg FLAG DEFAULT ARGS...: the value the last FLAG (or FLAG=VALUE) in ARGS gives, else DEFAULT.
_arg() {
  local flag=$1 value=$2
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      "$flag") [ $# -lt 2 ] || { value=$2; shift; } ;;
      "$flag"=*) value=${1#*=} ;;
    esac
    shift
  done
  echo "$value"
}

# _published_here FOLDER: it holds a published teacher (best.pth, and no run trained here).
_published_here() {
  [ -e "$1/best.pth" ] && [ ! -e "$1/last.pth" ] && [ ! -e "$1/summary.json" ]
}

# _finished FOLDER: a run that trained to its last epoch, or a published teacher.
_finished() {
  _published_here "$1" || grep -qs '"finished": true' "$1/summary.json"
}

# _fetched LABEL: this script fetched that teacher (or, in a dry run, would have).
_fetched() {
  local t
  for t in ${_fetched_list[@]+"${_fetched_list[@]}"}; do [ "$t" = "$1" ] && return 0; done
  return 1
}

# _read_zoo: list the published teachers once (not in a subshell: the list is kept).
_read_zoo() {
  [ "$_zoo_read" = 0 ] || return 0
  _zoo_read=1
  _zoo_list=$(python -m helper.teachers list --plain) || {
    note "the teacher zoo could not be listed (python -m helper.teachers list --plain);" \
      "training every teacher"
    _zoo_list=""
  }
}

# _release MODEL DATASET: the release that publishes MODEL for DATASET, or nothing.
_release() {
  local release model dataset top1
  while read -r release model dataset top1; do
    [ "$model" = "$1" ] && [ "$dataset" = "$2" ] && { echo "$release"; return 0; }
  done <<< "$_zoo_list"
}

# _teacher_step ARGS...: what to do for 'train_teacher.py ARGS' (see the top of this file);
# returns 1 when the teacher is found or fetched (nothing to train), and sets _resume.
_teacher_step() {
  _resume=""
  local model dataset trial
  model=$(_arg --model resnet32x4 "$@" $EXTRA)
  dataset=$(_arg --dataset cifar100 "$@" $EXTRA)
  trial=$(_arg --trial 0 "$@" $EXTRA)
  [[ "$trial" =~ ^[1-9][0-9]*$ ]] && return 0  # a student baseline, not a teacher
  local label="$model $dataset trial $trial"
  local folder="$SAVE/teachers/${model}_vanilla_${dataset}_trial_${trial}"
  if _finished "$folder"; then
    _found_list+=("$label")
    note "teacher $label: found in $folder"
    return 1
  fi
  if [ -e "$folder/last.pth" ]; then
    _resume=1
    _trained_list+=("$label")
    note "teacher $label: trained (continuing the unfinished run in $folder)"
    return 0
  fi
  local release=""
  if [ "$ZOO" = 1 ] && [ "$trial" = 0 ]; then
    _read_zoo
    release=$(_release "$model" "$dataset")
  fi
  if [ -n "$release" ]; then
    local fetch=(python -m helper.teachers fetch "$model" --release "$release"
                 --save_folder "$SAVE" --data_folder "$DATA")
    if [ "$DRY_RUN" = 1 ]; then
      echo "${fetch[*]}"
    elif ! "${fetch[@]}" || ! _published_here "$folder"; then
      note "teacher $label: the fetch from $release failed; training it"
      release=""
    fi
  fi
  if [ -n "$release" ]; then
    _fetched_list+=("$label")
    note "teacher $label: fetched from $release"
    return 1
  fi
  _trained_list+=("$label")
  note "teacher $label: trained"
  return 0
}

# _list NAME ITEMS...: "N NAME (a, b)", or nothing without items.
_list() {
  local name=$1
  shift
  [ $# -gt 0 ] || return 0
  local joined
  joined=$(printf ', %s' "$@")
  echo "$# $name (${joined:2})"
}

_teacher_summary() {
  local parts=()
  local part
  for part in "$(_list fetched ${_fetched_list[@]+"${_fetched_list[@]}"})" \
              "$(_list found ${_found_list[@]+"${_found_list[@]}"})" \
              "$(_list trained ${_trained_list[@]+"${_trained_list[@]}"})"; do
    [ -z "$part" ] || parts+=("$part")
  done
  [ ${#parts[@]} -gt 0 ] || return 0
  local joined
  joined=$(printf '; %s' "${parts[@]}")
  note "teachers: ${joined:2}"
}
# _at_exit STATUS: the teacher summary; then, for a script that ended well, the slurm
# launcher submits the plan (a dry run prints its jobs), or STATUS=1 lists the rows.
_at_exit() {
  local rc=$1
  [ "$STATUS" = 1 ] || _teacher_summary
  if [ -n "$_plan" ] && [ "$rc" = 0 ]; then
    if [ "$STATUS" = 1 ]; then
      python -m helper.table status "$_plan_save" --plan "$_plan" || rc=$?
    elif [ "$DRY_RUN" = 1 ]; then
      python -m helper.slurm submit "$_plan" --save "$_plan_save" --dry-run || rc=$?
    else
      python -m helper.slurm submit "$_plan" --save "$_plan_save" || rc=$?
    fi
  fi
  [ -z "$_plan" ] || rm -f "$_plan"
  exit "$rc"
}
trap '_at_exit $?' EXIT

# student_path STUDENT TEACHER DATASET METHOD CLS DIV BETA TRIAL [best|last]: a checkpoint
# train_student.py writes (helper/run/run_folder.py's student_run_name; the weights as Python's
# '{:g}' prints them, e.g. 15, 0.5, 0).
student_path() {
  echo "$SAVE/students/S:$1_T:$2_$3_$4_r:$5_a:$6_b:$7_$8/${9:-best}.pth"
}
