#!/usr/bin/env bash
# mdistiller README, DKD on CIFAR-100: alpha 1, T 4, 20-epoch warm-up, beta per pair from
# mdistiller's configs/cifar100/dkd/*.yaml; lr 0.01 for ShuffleNet/MobileNet students.
# Also KD and DKD with logit standardization (their settings) and DIST / ReviewKD on r32x4->r8x4.
# Then: python -m helper.report $SAVE/students $SAVE/teachers --table dkd_cifar100
source "$(dirname "$0")/common.sh"
PAIRS="resnet56:resnet20:2 resnet110:resnet32:2 resnet32x4:resnet8x4:8 wrn_40_2:wrn_16_2:6 wrn_40_2:wrn_40_1:6 vgg13:vgg8:6 resnet32x4:ShuffleV1:8 wrn_40_2:ShuffleV1:8 vgg13:MobileNetV2:6 ResNet50:MobileNetV2:8 resnet32x4:ShuffleV2:8"
for T in resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50; do
  job python train_teacher.py --model $T --dataset cifar100
done
barrier
for entry in $PAIRS; do
  IFS=: read -r T S BETA <<< "$entry"
  for trial in $(seq 1 "$TRIALS"); do
    job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 \
      --model_s $S --distill dkd -c 1 -d 0 -b 1 --dkd_alpha 1 --dkd_beta "$BETA" --kd_T 4 --trial "$trial"
  done
done
T=resnet32x4; S=resnet8x4
for trial in $(seq 1 "$TRIALS"); do
  job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 --model_s $S \
    --distill kd --logit_stand -c 0.1 -d 9 --kd_T 2 --trial "$trial"
  job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 --model_s $S \
    --distill dkd --logit_stand -c 1 -d 0 -b 9 --kd_T 2 --trial "$trial"
  job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 --model_s $S \
    --distill dist --trial "$trial"
  job python train_student.py --path_t "$(teacher_path $T cifar100)" --dataset cifar100 --model_s $S \
    --distill reviewkd --trial "$trial"
done
barrier
