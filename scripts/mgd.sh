#!/usr/bin/env bash
# MGD README: CUB-200 (ResNet-50 -> MobileNet-V2 / ShuffleNet-V2, 120 epochs, batch 64, lr 0.01,
# --mgd_update_freq 2, ImageNet-pretrained students) and ImageNet (ResNet-50 -> MobileNet-V1,
# 120 epochs, batch 256, lr 0.1, --mgd_update_freq 1). The CUB teacher is fine-tuned here from
# torchvision's ImageNet weights; the ImageNet teacher is torchvision's resnet50 weight file
# (IMAGENET_TEACHER=path). MGD's ImageNet recipe also warms the lr up, which is not done here.
# Then: python -m helper.report $SAVE --table mgd_cub200 (or mgd_imagenet)
source "$(dirname "$0")/common.sh"
IMAGENET_TEACHER=${IMAGENET_TEACHER:-resnet50-0676ba61.pth}
CUB="--dataset cub200 --batch_size 64 --epochs 120 --learning_rate 0.01 --lr_decay_epochs 30,60,90 --weight_decay 1e-4"
job python train_teacher.py --model resnet50 --pretrained IMAGENET1K_V1 $CUB
barrier
for trial in $(seq 1 "$TRIALS"); do
  for S in mobilenet_v2 shufflenet_v2_x1_0; do
    job python train_teacher.py --model $S --pretrained IMAGENET1K_V1 $CUB --trial "$trial"
    job python train_student.py --path_t "$(teacher_path resnet50 cub200)" --model_s $S \
      --pretrained IMAGENET1K_V1 --distill mgd --mgd_update_freq 2 $CUB --trial "$trial"
  done
  job python train_student.py --path_t "$(teacher_path resnet50 cub200)" --model_s shufflenet_v2_x1_0 \
    --pretrained IMAGENET1K_V1 --distill mgd --mgd_update_freq 2 --mgd_with_kd 1 $CUB --trial "${trial}_kd"
done
IMAGENET="--dataset imagenet --batch_size 256 --epochs 120 --learning_rate 0.1 --lr_decay_epochs 30,60,90 --weight_decay 1e-4 --dali gpu --multiprocessing-distributed --nproc ${#GPU_LIST[@]}"
GPU_LIST=("$(IFS=,; echo "${GPU_LIST[*]}")")
for trial in $(seq 1 "$TRIALS"); do
  job python train_teacher.py --model mobilenet_v1 $IMAGENET --trial "$trial"
  job python train_student.py --path_t "$IMAGENET_TEACHER" --model_t resnet50 --model_s mobilenet_v1 \
    --distill mgd --mgd_update_freq 1 $IMAGENET --trial "$trial"
done
barrier
