#!/usr/bin/env bash
# RepDistiller README, CIFAR-100 same-family pairs (last-epoch accuracy is the reported one).
# Recipe of every row, source HobbitLong/RepDistiller:
#   teachers, students alone   train_teacher.py defaults: batch 64, 240 epochs, lr 0.05 (0.01
#                              for MobileNet/ShuffleNet, automatic), x0.1 after 150/180/210,
#                              weight decay 5e-4, momentum 0.9
#   kd                         README.md / scripts/run_cifar_distill.sh: -r 0.1 -a 0.9 -b 0, T 4
#   fitnet at sp cc vid rkd    README.md: -r 1 -a 0 -b 100 / 1000 / 3000 / 0.02 / 1 / 1 / 30000 /
#   pkt ab ft fsp nst crd      1 / 200 / 50 / 50 / 0.8; train_student.py defaults: --hint_layer 2,
#                              --init_epochs 30 (ab, ft, fsp), CRD --feat_dim 128 --nce_k 16384
#                              --nce_t 0.07 --nce_m 0.5 --mode exact, RKD 25/50, AB margin 1,
#                              CC embedding 128; schedule as the teachers'
# Teacher checkpoint: last.pth (RepDistiller distils from ckpt_epoch_240.pth, the last epoch).
# Metric: last epoch (its README's table), for the teacher rows too.
# Known differences: none in the recipe (FSP is N/A for wrn_40_2 -> wrn_40_1 in the table).
# Then: python -m helper.report $SAVE/students $SAVE/teachers --table repdistiller_cifar100
source "$(dirname "$0")/common.sh"
SCHEDULE="--dataset cifar100 --batch_size 64 --epochs 240 --lr_decay_epochs 150,180,210 --lr_decay_rate 0.1 --weight_decay 5e-4 --momentum 0.9"
PAIRS="wrn_40_2:wrn_16_2 wrn_40_2:wrn_40_1 resnet56:resnet20 resnet110:resnet20 resnet110:resnet32 resnet32x4:resnet8x4 vgg13:vgg8"
note "repdistiller_cifar100: teacher checkpoint last.pth (RepDistiller's ckpt_epoch_240.pth); metric: last epoch"
for T in wrn_40_2 resnet56 resnet110 resnet32x4 vgg13; do
  job python train_teacher.py --model $T $SCHEDULE
done
barrier
for S in wrn_16_2 wrn_40_1 resnet20 resnet32 resnet8x4 vgg8; do
  for trial in $(seq 1 "$TRIALS"); do
    job python train_teacher.py --model $S $SCHEDULE --trial "$trial"
  done
done
for pair in $PAIRS; do
  T=${pair%%:*}; S=${pair##*:}
  for trial in $(seq 1 "$TRIALS"); do
    job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
      --distill kd -r 0.1 -a 0.9 -b 0 --kd_T 4 $SCHEDULE --trial "$trial"
    for method in "fitnet -b 100 --hint_layer 2" "at -b 1000" "sp -b 3000" "cc -b 0.02" "vid -b 1" \
                  "rkd -b 1" "pkt -b 30000" "ab -b 1 --init_epochs 30" "ft -b 200 --init_epochs 30" \
                  "fsp -b 50 --init_epochs 30" "nst -b 50" "crd -b 0.8"; do
      [ "$method" = "fsp -b 50 --init_epochs 30" ] && [ "$pair" = "wrn_40_2:wrn_40_1" ] && continue  # N/A
      job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
        --distill $method -r 1 -a 0 $SCHEDULE --trial "$trial"
    done
  done
done
barrier
