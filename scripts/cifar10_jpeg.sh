#!/usr/bin/env bash
# CPU-scale comparison on the real CIFAR-10 JPEGs (quality 75): teacher resnet56, student
# resnet20 alone and with 13 methods at their default weights, on a short schedule that fits a
# 2-core CPU (see results/cifar10_jpeg/). No published table: the figures are ours.
#   JPEG     the ImageFolder archive or folder ({train,test}/<class>/*.jpg), converted once into
#            $DATA/cifar-10-batches-py with scripts/image_folder_to_cifar.py
#   EPOCHS_T / EPOCHS_S  teacher / student epochs (default 8 / 3; lr x0.1 at 5/8 and 7/8 of the
#            teacher's schedule and for the student's last epoch)
#   AMP      precision flags of every run (default "--amp"); kd is also run in fp32 beside it
#   Recipe of every row: ours (no source); each method at its defaults (distillers/<method>.py).
#   Teacher checkpoint: best.pth. Metric: best epoch.
# Then: python -m helper.report $SAVE
source "$(dirname "$0")/common.sh"
note "cifar10_jpeg: teacher checkpoint best.pth; metric: best epoch (our own comparison)"
JPEG=${JPEG:-../shared/data/cifar10-jpeg.tar.gz}
EPOCHS_T=${EPOCHS_T:-8}
EPOCHS_S=${EPOCHS_S:-3}
AMP=${AMP---amp}
METHODS=${METHODS:-"kd fitnet at sp vid crd srrl semckd simkd reviewkd dkd dist"}
if [ "$DRY_RUN" != 1 ] && [ ! -d "$DATA/cifar-10-batches-py" ]; then
  python scripts/image_folder_to_cifar.py "$JPEG" "$DATA"
fi
COMMON="--dataset cifar10 --batch_size 64 --learning_rate 0.05"
TEACHER="$COMMON --epochs $EPOCHS_T --lr_decay_epochs $((EPOCHS_T * 5 / 8)),$((EPOCHS_T * 7 / 8)) $AMP"
STUDENT="$COMMON --epochs $EPOCHS_S --lr_decay_epochs $((EPOCHS_S - 1))"
job python train_teacher.py --model resnet56 $TEACHER
barrier
for trial in $(seq 1 "$TRIALS"); do
  job python train_teacher.py --model resnet20 $STUDENT $AMP --trial "$trial"
  for method in $METHODS; do
    job python train_student.py --path_t "$(teacher_path resnet56 cifar10 best)" --model_s resnet20 \
      --distill "$method" $STUDENT $AMP --trial "$trial"
  done
  # the same kd run (same seed) in fp32 under $SAVE/fp32, to show what --amp costs in accuracy
  [ -z "$AMP" ] || SAVE=$SAVE/fp32 job python train_student.py \
    --path_t "$(teacher_path resnet56 cifar10 best)" --model_s resnet20 --distill kd $STUDENT --trial "$trial"
done
barrier
