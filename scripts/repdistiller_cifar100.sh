#!/usr/bin/env bash
# RepDistiller README, CIFAR-100 same-family pairs (last-epoch accuracy is the reported one).
# kd: -r 0.1 -a 0.9; feature methods: -a 0; AB, FT, FSP with the 30-epoch init stage.
# Then: python -m helper.report $SAVE/students $SAVE/teachers --table repdistiller_cifar100
source "$(dirname "$0")/common.sh"
PAIRS="wrn_40_2:wrn_16_2 wrn_40_2:wrn_40_1 resnet56:resnet20 resnet110:resnet20 resnet110:resnet32 resnet32x4:resnet8x4 vgg13:vgg8"
for T in wrn_40_2 resnet56 resnet110 resnet32x4 vgg13; do
  job python train_teacher.py --model $T --dataset cifar100
done
barrier
for S in wrn_16_2 wrn_40_1 resnet20 resnet32 resnet8x4 vgg8; do
  for trial in $(seq 1 "$TRIALS"); do
    job python train_teacher.py --model $S --dataset cifar100 --trial "$trial"
  done
done
for pair in $PAIRS; do
  T=${pair%%:*}; S=${pair##*:}
  for trial in $(seq 1 "$TRIALS"); do
    job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 \
      --model_s $S --distill kd -r 0.1 -a 0.9 -b 0 --trial "$trial"
    for method in "fitnet -b 100 --hint_layer 2" "at -b 1000" "sp -b 3000" "cc -b 0.02" "vid -b 1" \
                  "rkd -b 1" "pkt -b 30000" "ab -b 1" "ft -b 200" "fsp -b 50" "nst -b 50" "crd -b 0.8"; do
      [ "$method" = "fsp -b 50" ] && [ "$pair" = "wrn_40_2:wrn_40_1" ] && continue  # N/A in the table
      job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 \
        --model_s $S --distill $method -r 1 -a 0 --trial "$trial"
    done
  done
done
barrier
