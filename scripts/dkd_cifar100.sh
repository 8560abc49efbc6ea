#!/usr/bin/env bash
# mdistiller README, DKD on CIFAR-100 (11 pairs), and the resnet32x4 -> resnet8x4 figures of
# KD and DKD with logit standardization, DIST and ReviewKD.
# Recipe of every row:
#   teachers (all but ReviewKD's)  RepDistiller's train_teacher.py defaults (mdistiller's
#                                  cifar_teachers.tar are RepDistiller's/CRD's checkpoints):
#                                  batch 64, 240 epochs, lr 0.05, x0.1 after 150/180/210, wd 5e-4
#   dkd (11 pairs)                 megvii-research/mdistiller configs/cifar100/dkd/<pair>.yaml and
#                                  mdistiller/engine/cfg.py: the schedule above (lr 0.01 for
#                                  ShuffleNet/MobileNet students), DKD CE 1, ALPHA 1, BETA 8/6/2
#                                  per pair, T 4, WARMUP 20
#   kd + logit standardization     sunshangquan/logit-standardization-KD README.md and
#                                  tools/train.py (--logit-stand --base-temp 2 --kd-weight 9 on
#                                  mdistiller's KD config): CE 0.1 (cfg default), KD 9, T 2
#   dkd + logit standardization    the same tools/train.py on mdistiller's DKD config, at its
#                                  first version 6083e2d (2024-03-01; the logs, e.g.
#                                  logs/DKD/dkd,resnet32x4,resnet8x4,2,9.txt, were committed the
#                                  same day, e6ed3ce), lines 116-118: ALPHA = 1 * 9 = 9 and BETA =
#                                  ALPHA * 9 = 81 (it scales the new ALPHA), and T stays the DKD
#                                  config's 4 (--base-temp sets KD.TEMPERATURE, which DKD does not
#                                  read); CE 1, WARMUP 20. HEAD (6b58661, lines 116-118) computes
#                                  BETA = 8 * 9 = 72 and DKD.T = 2 instead: the commented row below
#   dist                           hunto/image_classification_sota configs/strategies/distill/
#                                  dist_cifar.yaml (d9662f7, unchanged to 6f7a70a; the config
#                                  hunto/DIST_KD's README names for CIFAR-100): kd dist_t4 (beta 1,
#                                  gamma 1, tau 4), kd_loss_weight 2, ori_loss_weight 1; batch 64,
#                                  lr 0.05, 240 epochs, weight decay 5e-4 (opt_no_filter: on every
#                                  parameter, as here), momentum 0.9, sgd_no_nesterov True (plain
#                                  momentum), smoothing 0.0, aa null, cutout 0, reprob 0, image
#                                  mean/std RepDistiller's; sched step, warmup_epochs 120 at
#                                  warmup_lr 0.05 = lr (constant), then StepLR every 30 epochs
#                                  x0.1 counted from the warm-up's end (lib/utils/scheduler.py):
#                                  x0.1 after 150/180/210, the schedule above
#   reviewkd                       dvlab-research/ReviewKD CIFAR-100/train.py (49015fb) and
#                                  script/reviewKD.sh: batch 128, lr 0.1, 240 epochs, wd 5e-4,
#                                  Nesterov momentum 0.9 (lines 178-179: --nesterov),
#                                  --kd-loss-weight 5, warm-up 20, CE 1, no KL; normalised with
#                                  CIFAR-10's (125.3, 123.0, 113.9)/255 and (63.0, 62.1, 66.7)/255
#                                  (lines 96-97: --cifar_normalization reviewkd); util/misc.py
#                                  lr_schedule (lines 55-60) multiplies by 0.1 after the 0-based
#                                  epochs 150/180/210, one epoch later than ours: --lr_decay_epochs
#                                  151,181,211; teacher in training mode (train.py never calls
#                                  teacher.eval(): --teacher_train); its teacher is its own baseline
#                                  (the same train.py without a teacher, script/baseline.sh, so
#                                  the same data and schedule flags), best checkpoint
# Teacher checkpoints: last.pth for DKD, KD+LS, DKD+LS and DIST (mdistiller's and DIST's
# ckpt_epoch_240.pth); best.pth of the separately trained resnet32x4 (trial "reviewkd") for
# ReviewKD (its checkpoints/cifar100_resnet32x4__baseline1_best.pt). Metric: best epoch.
# Then: python -m helper.report $SAVE/students $SAVE/teachers --table dkd_cifar100
source "$(dirname "$0")/common.sh"
SCHEDULE="--dataset cifar100 --batch_size 64 --epochs 240 --lr_decay_epochs 150,180,210 --lr_decay_rate 0.1 --weight_decay 5e-4 --momentum 0.9"
REVIEWKD="--dataset cifar100 --batch_size 128 --epochs 240 --learning_rate 0.1 --lr_decay_epochs 151,181,211 --lr_decay_rate 0.1 --weight_decay 5e-4 --momentum 0.9 --nesterov --cifar_normalization reviewkd"
PAIRS="resnet56:resnet20:2 resnet110:resnet32:2 resnet32x4:resnet8x4:8 wrn_40_2:wrn_16_2:6 wrn_40_2:wrn_40_1:6 vgg13:vgg8:6 resnet32x4:ShuffleV1:8 wrn_40_2:ShuffleV1:8 vgg13:MobileNetV2:6 ResNet50:MobileNetV2:8 resnet32x4:ShuffleV2:8"
note "dkd_cifar100: teacher checkpoint last.pth (mdistiller's and DIST's ckpt_epoch_240.pth) for dkd, kd+LS, dkd+LS, dist; best.pth of trial reviewkd for reviewkd; metric: best epoch"
for T in resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50; do
  job python train_teacher.py --model $T $SCHEDULE --learning_rate 0.05
done
job python train_teacher.py --model resnet32x4 $REVIEWKD --trial reviewkd
barrier
for entry in $PAIRS; do
  IFS=: read -r T S BETA <<< "$entry"
  for trial in $(seq 1 "$TRIALS"); do
    job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
      --distill dkd -c 1 -d 0 -b 1 --dkd_alpha 1 --dkd_beta "$BETA" --kd_T 4 --dkd_warmup 20 \
      $SCHEDULE --trial "$trial"
  done
done
T=resnet32x4; S=resnet8x4
for trial in $(seq 1 "$TRIALS"); do
  job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
    --distill kd --logit_stand -c 0.1 -d 9 --kd_T 2 $SCHEDULE --trial "${trial}_ls"
  job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
    --distill dkd --logit_stand -c 1 -d 0 -b 1 --dkd_alpha 9 --dkd_beta 81 --kd_T 4 --dkd_warmup 20 \
    $SCHEDULE --trial "${trial}_ls"
  # logit-standardization-KD HEAD (6b58661) tools/train.py instead: BETA 8 * 9, T 2
  # job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
  #   --distill dkd --logit_stand -c 1 -d 0 -b 1 --dkd_alpha 9 --dkd_beta 72 --kd_T 2 --dkd_warmup 20 \
  #   $SCHEDULE --trial "${trial}_ls_head"
  job python train_student.py --path_t "$(teacher_path $T cifar100 last)" --model_s $S \
    --distill dist -c 1 -d 0 -b 2 --dist_beta 1 --dist_gamma 1 --dist_tau 4 $SCHEDULE --trial "$trial"
  job python train_student.py --path_t "$(teacher_path $T cifar100 best reviewkd)" --model_s $S \
    --distill reviewkd -c 1 -d 0 -b 5 --reviewkd_warmup 20 --teacher_train $REVIEWKD \
    --trial "$trial"
done
barrier
