#!/usr/bin/env bash
# torchdistill's ILSVRC-2012 table: torchvision ResNet-34 (pretrained) -> ResNet-18.
# Recipe of every row: its own config (yoshitomo-matsubara/torchdistill, configs/official/ilsvrc2012/
# yoshitomo-matsubara/rrpr2020/*.yaml and their logs, the rrpr2020 README; nlp-oss2023 for KR;
# configs/sample/ilsvrc2012/dist for DIST). Every row: SGD momentum 0.9, weight decay 1e-4
# unless said, RandomResizedCrop 224 + flip, teacher in eval mode. "batch" is the total over
# all processes: torchdistill's per-process batch times its 3 GPUs (-adjust_lr multiplies the
# lr by the 3 as well); its README's totals 256 and 512 where 85 x 3 and 171 x 3 ran.
#   resnet18 alone (69.76)  torchvision's own weights; trained here with torchvision's
#                           references/classification recipe: 90 epochs, batch 256, lr 0.1,
#                           x0.1 after 30 and 60
#   kd   71.37  kd-resnet18_from_resnet34.yaml (3 GPUs, -adjust_lr: torchdistill issue #237):
#               100 epochs, batch 768, lr 0.3, x0.1 after 30/60/90; KDLoss T 1, alpha 0.5
#               (alpha weighs the CE): -c 0.5 -d 0.5 --kd_T 1
#   at   70.90  at-resnet18_from_resnet34.yaml + .log (3 GPUs, -adjust_lr): 100 epochs, batch
#               768, lr 0.3, x0.1 after 30/60/90; CE 1 + 1000 * ATLoss (mode code, p 2) on
#               layer3 and layer4, no KD: -c 1 -d 0 -b 1000 --at_stages 3,4
#   ft   71.56  ft-resnet18_from_resnet34.yaml + .log (1 GPU): paraphraser (k 0.5, no BN) 1 epoch
#               of MSE reconstruction at lr 0.01, then 90 epochs, batch 256, lr 0.1, x0.1 after
#               30/60/90, CE 1 + 1000 * FTLoss (p 1, normalised flat factors): --init_epochs 1
#               --ft_init_lr 0.01 --ft_rate 0.5 --ft_paper_factor --ft_translator_no_bn -c 1 -d 0 -b 1000
#   crd  70.93  crd-resnet18_from_resnet34.yaml (85 x 3 GPUs, lr not adjusted): 100 epochs,
#               batch 256, lr 0.1, x0.1 after 30/60/90; CE 1 + 0.8 * CRD (128-d, 16384
#               negatives, T 0.07, momentum 0.5, exact), no KD; --sync_bn: its
#               crd-resnet18_from_resnet34.log (0f86a75) starts with Namespace(...,
#               sync_bn=True, world_size=3), the only rrpr2020 log with it (the others: False)
#   tfkd 70.52  tfkd-resnet18_from_resnet18.yaml + .log (3 GPUs, -adjust_lr): teacher
#               torchvision's pretrained ResNet-18; 90 epochs, batch 768, lr 0.3, x0.1 after
#               30/60/80; KDLoss T 1, alpha 0.9 (CE 0.9 + 0.1 * KL batchmean):
#               --distill tfkd -c 0.9 -d 0 -b 0.1 --tfkd_T 1 --tfkd_reduction batchmean
#   sskd 70.09  sskd-resnet18_from_resnet34.yaml (85 x 3 GPUs): teacher SS head 30 epochs at lr
#               0.1, x0.1 after 10/20; then 100 epochs at lr 0.1, x0.1 after 30/60/90; weight
#               decay 5e-4 in both; loss weights [CE 1, KD 0.9, SS 10, TF 2.7], kl/tf T 4, ss T
#               0.5, ratios ss 0.75, tf 1.0
#   l2   71.08  cse_l2-resnet18_from_resnet34.yaml (171 x 3 GPUs): 90 epochs, batch 512, lr 0.2,
#               x0.1 after 30/60; CE 1 + 15 * MSE(avgpool): -c 1 -d 0 -b 15
#   pad_l2 71.71  pad_l2-resnet18_from_resnet34.yaml (171 x 3 GPUs) after the l2 row: starts
#               from that run's saved (best) checkpoint, 30 epochs at the constant lr 0.002,
#               batch 512, CE 1 + 1 * PADL2Loss: --pad_l2_l2_epochs 0 --pretrained <l2 best.pth>
#   reviewkd 71.64  nlp-oss2023/kr-resnet18_from_resnet34.yaml + .log (32 x 3 GPUs,
#               -adjust_lr): 100 epochs, batch 96, lr 0.075, x0.1 after 30/60/90; CE 1 + five
#               HCL terms of weight 1, no warm-up, student and teacher features before each
#               stage's last ReLU: -c 1 -d 0 -b 1 --reviewkd_warmup 0 --reviewkd_student_preact
#   dist 71.95  configs/sample/ilsvrc2012/dist/resnet18_from_resnet34.yaml: 100 epochs, batch
#               256, lr 0.1, x0.1 after 30/60/90; CE 1 + 2 * DIST(beta 1, gamma 1, tau 1)
# Teacher checkpoints: torchvision's weight files (TEACHER, resnet34-b627a593.pth; TEACHER18,
# resnet18-f37072fd.pth for Tf-KD), as torchdistill's pretrained=True. Metric: best epoch
# (torchdistill tests the best checkpoint at the end).
# Known differences: the batch must split evenly over GPUS (256 and 512 do not over 3 GPUs:
# torchdistill's 255 and 513). DIST's world size is not given by its sample config: its
# per-process batch 256 at lr 0.1 is taken as the total.
# Then: python -m helper.report $SAVE --table torchdistill_imagenet
source "$(dirname "$0")/common.sh"
TEACHER=${TEACHER:-resnet34-b627a593.pth}
TEACHER18=${TEACHER18:-resnet18-f37072fd.pth}
NPROC=${#GPU_LIST[@]}
GPU_LIST=("$(IFS=,; echo "${GPU_LIST[*]}")")  # all GPUs form one job
RUN="--dataset imagenet --num_workers 16 --dali gpu --multiprocessing-distributed --nproc $NPROC --dist-url tcp://127.0.0.1:23456 --momentum 0.9 --lr_decay_rate 0.1"
E100="--epochs 100 --lr_decay_epochs 30,60,90 --weight_decay 1e-4"
STUDENT="--path_t $TEACHER --model_t resnet34 --model_s resnet18"
L2_WEIGHTS="-c 1 -d 0 -b 15"
note "torchdistill_imagenet: teacher checkpoint $TEACHER (torchvision resnet34; $TEACHER18 for tfkd); metric: best epoch"
for trial in $(seq 1 "$TRIALS"); do
  job python train_teacher.py --model resnet18 $RUN --epochs 90 --batch_size 256 --learning_rate 0.1 \
    --lr_decay_epochs 30,60 --weight_decay 1e-4 --trial "$trial"
  job python train_student.py $STUDENT $RUN $E100 --batch_size 768 --learning_rate 0.3 \
    --distill kd -c 0.5 -d 0.5 --kd_T 1 --trial "$trial"
  job python train_student.py $STUDENT $RUN $E100 --batch_size 768 --learning_rate 0.3 \
    --distill at -c 1 -d 0 -b 1000 --at_p 2 --at_stages 3,4 --trial "$trial"
  job python train_student.py $STUDENT $RUN --epochs 90 --lr_decay_epochs 30,60,90 --weight_decay 1e-4 \
    --batch_size 256 --learning_rate 0.1 --distill ft -c 1 -d 0 -b 1000 --init_epochs 1 \
    --ft_init_lr 0.01 --ft_rate 0.5 --ft_paper_factor --ft_translator_no_bn --trial "$trial"
  job python train_student.py $STUDENT $RUN $E100 --batch_size 256 --learning_rate 0.1 \
    --distill crd -c 1 -d 0 -b 0.8 --feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact \
    --sync_bn --trial "$trial"
  job python train_student.py --path_t "$TEACHER18" --model_t resnet18 --model_s resnet18 $RUN \
    --epochs 90 --lr_decay_epochs 30,60,80 --weight_decay 1e-4 --batch_size 768 --learning_rate 0.3 \
    --distill tfkd -c 0.9 -d 0 -b 0.1 --tfkd_T 1 --tfkd_reduction batchmean --tfkd_multiplier 1 \
    --trial "$trial"
  job python train_student.py $STUDENT $RUN --epochs 100 --lr_decay_epochs 30,60,90 --weight_decay 5e-4 \
    --batch_size 256 --learning_rate 0.1 --distill sskd -c 1 -d 0.9 -b 10 --kd_T 4 \
    --sskd_tf_weight 2.7 --sskd_tf_T 4 --sskd_ss_T 0.5 --sskd_ratio_ss 0.75 --sskd_ratio_tf 1.0 \
    --sskd_t_epochs 30 --sskd_t_lr 0.1 --sskd_t_milestones 10,20 --trial "$trial"
  job python train_student.py $STUDENT $RUN --epochs 90 --lr_decay_epochs 30,60 --weight_decay 1e-4 \
    --batch_size 512 --learning_rate 0.2 --distill l2 $L2_WEIGHTS --trial "$trial"
  job python train_student.py $STUDENT $RUN $E100 --batch_size 96 --learning_rate 0.075 \
    --distill reviewkd -c 1 -d 0 -b 1 --reviewkd_warmup 0 --reviewkd_student_preact --trial "$trial"
  job python train_student.py $STUDENT $RUN $E100 --batch_size 256 --learning_rate 0.1 \
    --distill dist -c 1 -d 0 -b 2 --dist_beta 1 --dist_gamma 1 --dist_tau 1 --trial "$trial"
done
barrier
# PAD-L2, the published recipe: the second run starts from the l2 run of the same trial.
note "torchdistill_imagenet: pad_l2 starts from the l2 run's best.pth of its trial"
for trial in $(seq 1 "$TRIALS"); do
  job python train_student.py $STUDENT $RUN --epochs 30 --lr_decay_epochs 30 --weight_decay 1e-4 \
    --batch_size 512 --learning_rate 0.002 --distill pad_l2 -c 1 -d 0 -b 1 --pad_l2_l2_epochs 0 \
    --pretrained "$(student_path resnet18 resnet34 imagenet l2 1 0 15 "$trial" best)" --trial "$trial"
done
barrier
