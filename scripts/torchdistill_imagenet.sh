#!/usr/bin/env bash
# torchdistill's ILSVRC-2012 table: torchvision ResNet-34 (pretrained) -> ResNet-18, 100 epochs,
# SGD lr 0.1 for a total batch of 256, decay at 30/60/90, wd 1e-4; KD with T=1, alpha 0.5.
# The teacher is torchvision's resnet34 weight file (TEACHER=path/to/resnet34-b627a593.pth).
# Runs each student on all GPUS of this machine with DALI (one job at a time).
# Then: python -m helper.report $SAVE --table torchdistill_imagenet
source "$(dirname "$0")/common.sh"
TEACHER=${TEACHER:-resnet34-b627a593.pth}
NPROC=${#GPU_LIST[@]}
GPU_LIST=("$(IFS=,; echo "${GPU_LIST[*]}")")  # all GPUs form one job
SCHEDULE="--dataset imagenet --batch_size 256 --epochs 100 --learning_rate 0.1 --lr_decay_epochs 30,60,90 --weight_decay 1e-4 --num_workers 16 --dali gpu --multiprocessing-distributed --nproc $NPROC --dist-url tcp://127.0.0.1:23456"
STUDENT="--path_t $TEACHER --model_t resnet34 --model_s resnet18"
for trial in $(seq 1 "$TRIALS"); do
  job python train_teacher.py --model resnet18 $SCHEDULE --trial "$trial"
  job python train_student.py $STUDENT --distill kd -c 0.5 -d 0.5 --kd_T 1 $SCHEDULE --trial "$trial"
  for method in "at" "ft" "crd" "sskd" "l2" "pad_l2" "reviewkd" "dist -b 1 --dist_tau 1"; do
    job python train_student.py $STUDENT --distill $method $SCHEDULE --trial "$trial"
  done
  job python train_student.py --path_t "$(teacher_path resnet18 imagenet | sed "s/trial_0/trial_$trial/")" \
    --model_s resnet18 --distill tfkd $SCHEDULE --trial "$trial"
done
barrier
