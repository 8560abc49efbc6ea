#!/usr/bin/env bash
# "Knowledge Distillation" README: CIFAR-10/100, ResNet-20 -> ResNet-20 and ResNet-110 ->
# ResNet-110 (teacher and student of the same architecture); 200 epochs, SGD lr 0.1,
# milestones 100/150, wd 1e-4, batch 128; best epoch reported, 3-run mean.
# Then: python -m helper.report $SAVE --table kd_zoo_cifar10 (or kd_zoo_cifar100)
source "$(dirname "$0")/common.sh"
SCHEDULE="--epochs 200 --learning_rate 0.1 --lr_decay_epochs 100,150 --weight_decay 1e-4 --batch_size 128"
for D in cifar10 cifar100; do
  for M in resnet20 resnet110; do
    job python train_teacher.py --model $M --dataset $D $SCHEDULE
  done
done
barrier
for D in cifar10 cifar100; do
  for M in resnet20 resnet110; do
    for trial in $(seq 1 "$TRIALS"); do
      job python train_teacher.py --model $M --dataset $D $SCHEDULE --trial "$trial"
      for method in "logits -c 1 -d 0" "kd -c 1 -d 1" "at -c 1 -d 0" "at -c 1 -d 1" "fsp -c 1 -d 0"; do
        job python train_student.py --path_t "$(teacher_path $M $D)" --dataset $D --model_s $M \
          --distill $method $SCHEDULE --trial "$trial"
      done
    done
  done
done
barrier
