#!/usr/bin/env bash
# SimKD README, CIFAR-100: teacher resnet32x4; students resnet8x4, vgg8, ShuffleV2_1_5.
# Recipe of every row, source DefangChen/SimKD:
#   teacher resnet32x4     README.md "Get the pretrained teacher models" (train_teacher.py
#                          --batch_size 64 --epochs 240 --learning_rate 0.05
#                          --lr_decay_epochs 150,180,210 --weight_decay 5e-4)
#   student (CE only)      the same train_teacher.py command for the student (lr 0.01 for
#                          ShuffleV2_1_5: train_student.py's MobileNet/ShuffleNet rule, automatic)
#   kd fitnet at sp vid    scripts/run_distill.sh: -c 1 -d 1 -b 0 / 100 / 1000 / 3000 / 1 /
#   crd srrl semckd        0.8 / 1 / 400; train_student.py defaults: --kd_T 4, --hint_layer 1,
#                          CRD --feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact,
#                          SemCKD -s 1; schedule as the teacher's
#   simkd f=8/4/2          scripts/run_distill.sh: -c 0 -d 0 -b 1, -f 8 / 4 / 2
# Teacher checkpoint: best.pth (SimKD distils from resnet32x4_best.pth). Metric: best epoch.
# Known differences: none in the recipe. With the teacher zoo (ZOO=1, the default) the teacher
# is the published resnet32x4 that `python -m helper.teachers list` names (mdistiller's
# release, RepDistiller's 240-epoch weights), not SimKD's own best.pth; ZOO=0 trains it.
# Then: python -m helper.report $SAVE/students $SAVE/teachers --table simkd_cifar100
source "$(dirname "$0")/common.sh"
SCHEDULE="--dataset cifar100 --batch_size 64 --epochs 240 --lr_decay_epochs 150,180,210 --lr_decay_rate 0.1 --weight_decay 5e-4 --momentum 0.9"
T=resnet32x4
note "simkd_cifar100: teacher checkpoint best.pth (SimKD's resnet32x4_best.pth); metric: best epoch"
job python train_teacher.py --model $T $SCHEDULE --learning_rate 0.05
barrier
for S in resnet8x4 vgg8 ShuffleV2_1_5; do
  for trial in $(seq 1 "$TRIALS"); do
    job python train_teacher.py --model $S $SCHEDULE --trial "$trial"
    for method in "kd -b 0" "fitnet -b 100 --hint_layer 1" "at -b 1000" "sp -b 3000" "vid -b 1" \
                  "crd -b 0.8" "srrl -b 1" "semckd -b 400 --semckd_soft 1"; do
      job python train_student.py --path_t "$(teacher_path $T cifar100 best)" --model_s $S \
        --distill $method -c 1 -d 1 --kd_T 4 $SCHEDULE --trial "$trial"
    done
    for f in 8 4 2; do
      job python train_student.py --path_t "$(teacher_path $T cifar100 best)" --model_s $S \
        --distill simkd -c 0 -d 0 -b 1 --factor $f $SCHEDULE --trial "${trial}_f$f"
    done
  done
done
barrier
