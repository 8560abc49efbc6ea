#!/usr/bin/env bash
# SimKD README, CIFAR-100: teacher resnet32x4; students resnet8x4, vgg8, ShuffleV2_1_5.
# 240 epochs, batch 64, lr 0.05 (0.01 for ShuffleNet, automatic), decay 150/180/210.
# Then: python -m helper.report $SAVE/students $SAVE/teachers --table simkd_cifar100
source "$(dirname "$0")/common.sh"
T=resnet32x4
job python train_teacher.py --model $T --dataset cifar100
barrier
for S in resnet8x4 vgg8 ShuffleV2_1_5; do
  for trial in $(seq 1 "$TRIALS"); do
    job python train_teacher.py --model $S --dataset cifar100 --trial "$trial"
    for method in "kd" "fitnet -b 100" "at -b 1000" "sp -b 3000" "vid -b 1" "crd -b 0.8" \
                  "srrl -b 1" "semckd -b 400"; do
      job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 \
        --model_s $S --distill $method -c 1 -d 1 --trial "$trial"
    done
    for f in 8 4 2; do
      job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 \
        --model_s $S --distill simkd -c 0 -d 0 -b 1 --factor $f --trial "${trial}_f$f"
    done
  done
done
barrier
