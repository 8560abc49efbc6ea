#!/usr/bin/env bash
# Hinton, Vinyals & Dean 2015 on MNIST: teacher 784-1200-1200-10 with dropout and inputs
# jittered by up to 2 pixels; student 784-800-800-10 alone and distilled at T=20.
# The paper's schedule is not given; this one fits a CPU (see results/hinton_mnist/).
# Recipe of every row: the architectures, the jitter of 2 pixels and T=20 are the paper's
# (Hinton, Vinyals & Dean 2015, section 3); the schedule (SGD lr 0.01, batch 128, no weight
# decay, x0.1 after 2/3 and 5/6 of EPOCHS) is ours, as the -c 1 -d 1 weights.
# Teacher checkpoint: best.pth. Metric: best epoch (the paper's test errors).
# Then: python -m helper.report $SAVE --table hinton_mnist
source "$(dirname "$0")/common.sh"
note "hinton_mnist: teacher checkpoint best.pth; metric: best epoch"
EPOCHS=${EPOCHS:-60}
SCHEDULE="--dataset mnist --batch_size 128 --epochs $EPOCHS --lr_decay_epochs $((EPOCHS * 2 / 3)),$((EPOCHS * 5 / 6)) --learning_rate 0.01 --weight_decay 0"
job python train_teacher.py --model mlp_1200 --jitter 2 $SCHEDULE
barrier
for trial in $(seq 1 "$TRIALS"); do
  job python train_teacher.py --model mlp_800 $SCHEDULE --trial "$trial"
  job python train_student.py --path_t "$(teacher_path mlp_1200 mnist best)" --model_s mlp_800 \
    --distill kd --kd_T 20 -c 1 -d 1 $SCHEDULE --trial "$trial"
done
barrier
