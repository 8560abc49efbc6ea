#!/usr/bin/env bash
# MGD README (kaiyuyue/mgd): CUB-200 (ResNet-50 -> MobileNet-V2 / ShuffleNet-V2, MGD-AMP and
# ShuffleNet-V2 MGD-AMP + KD) and ImageNet (ResNet-50 -> MobileNet-V1, MGD-AMP).
# Recipe of every row, source kaiyuyue/mgd README.md (training scripts) and main_mgd.py
# (defaults): SGD momentum 0.9 with Nesterov, weight decay 1e-4, lr x0.1 after epochs 31, 61
# and 81 (--lr-drop-epochs, MultiStepLR stepped per epoch), --loss-factor 1e4, reducer amp,
# CE weight 1; "MGD settings are same as settings for base training" (the students alone):
#   CUB-200 students alone, mgd    README "Training Script on CUB-200": 120 epochs, batch 64,
#                                  lr 0.01, --mgd-update-freq 2, --use-pretrained 1 (ImageNet
#                                  weights); shufflenet + KD: --mgd-with-kd 1 (KD T 1.5, weight 1)
#   CUB-200 teacher resnet50       not published (--teacher-resume [path/to/cub/teacher/pth]);
#                                  fine-tuned here from torchvision's ImageNet weights with the
#                                  students' recipe
#   ImageNet mobilenet_v1 alone,   README "Training Script on ImageNet-1K": 120 epochs, batch 256,
#   mgd                            lr 0.1, --mgd-update-freq 1, --warmup 1 (main_mgd.py: 10 more
#                                  epochs of linear warm-up from 0.1 x lr, the drops moved to
#                                  41/71/91, 130 epochs in all); teacher torchvision's pretrained
#                                  ResNet-50 (IMAGENET_TEACHER=resnet50-0676ba61.pth)
# Teacher checkpoints: best.pth of the fine-tuned CUB teacher; torchvision's weight file for
# ImageNet. Metric: best epoch (the README's "best top1 err.").
# Known differences: ImageNet's 10-epoch linear warm-up starts at 0.1 x lr in main_mgd.py;
# --warmup_epochs 10 here starts at lr / 11 (epoch k at lr * k / 11) and reaches the full lr at
# epoch 11, as the reference. The reference's DataParallel batch is split over the GPUs the
# same way.
# Then: python -m helper.report $SAVE --table mgd_cub200 (or mgd_imagenet)
source "$(dirname "$0")/common.sh"
IMAGENET_TEACHER=${IMAGENET_TEACHER:-resnet50-0676ba61.pth}
CUB="--dataset cub200 --batch_size 64 --epochs 120 --learning_rate 0.01 --lr_decay_epochs 31,61,81 --lr_decay_rate 0.1 --weight_decay 1e-4 --momentum 0.9 --nesterov"
MGD="--distill mgd -c 1 -d 0 -b 1 --mgd_reducer amp --mgd_loss_factor 10000"
note "mgd_cub200: teacher checkpoint best.pth of the fine-tuned resnet50; mgd_imagenet: $IMAGENET_TEACHER (torchvision); metric: best epoch"
job python train_teacher.py --model resnet50 --pretrained IMAGENET1K_V1 $CUB
barrier
for trial in $(seq 1 "$TRIALS"); do
  for S in mobilenet_v2 shufflenet_v2_x1_0; do
    job python train_teacher.py --model $S --pretrained IMAGENET1K_V1 $CUB --trial "$trial"
    job python train_student.py --path_t "$(teacher_path resnet50 cub200 best)" --model_s $S \
      --pretrained IMAGENET1K_V1 $MGD --mgd_update_freq 2 $CUB --trial "$trial"
  done
  job python train_student.py --path_t "$(teacher_path resnet50 cub200 best)" --model_s shufflenet_v2_x1_0 \
    --pretrained IMAGENET1K_V1 $MGD --mgd_update_freq 2 --mgd_with_kd 1 $CUB --trial "${trial}_kd"
done
IMAGENET="--dataset imagenet --batch_size 256 --epochs 130 --warmup_epochs 10 --learning_rate 0.1 --lr_decay_epochs 41,71,91 --lr_decay_rate 0.1 --weight_decay 1e-4 --momentum 0.9 --nesterov --dali gpu --multiprocessing-distributed --nproc ${#GPU_LIST[@]}"
GPU_LIST=("$(IFS=,; echo "${GPU_LIST[*]}")")
for trial in $(seq 1 "$TRIALS"); do
  job python train_teacher.py --model mobilenet_v1 $IMAGENET --trial "$trial"
  job python train_student.py --path_t "$IMAGENET_TEACHER" --model_t resnet50 --model_s mobilenet_v1 \
    $MGD --mgd_update_freq 1 $IMAGENET --trial "$trial"
done
barrier
