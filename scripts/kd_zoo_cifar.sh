#!/usr/bin/env bash
# "Knowledge Distillation" README (hankyul2/KnowledgeDistillation; it points to AberHu's
# Knowledge-Distillation-Zoo as a reference but trains with its own code): CIFAR-10/100,
# ResNet-20 -> ResNet-20 and ResNet-110 -> ResNet-110 (teacher = the baseline of the same
# architecture), best epoch, 3-run mean.
# Recipe of every row, source hankyul2/KnowledgeDistillation README.md ("Experiment Setting")
# and src/train*.py: SGD lr 0.1, momentum 0.9 (plain: no Nesterov in any of its MyOpt),
# weight decay 1e-4, x0.1 after epochs 100 and 150, 200 epochs, batch 128, CE weight 1:
#   baseline (teacher, trial 0; students alone)   src/train.py: CE only
#   logits      src/train_logit.py + src/logits.py: CE + 1 * MSE (Logits, no weight)
#   st          src/train_st.py + src/st.py: CE + 1 * KL(T=4, batchmean) * T^2
#   at          src/train_at.py + src/at.py: CE + 1000 * sum over the 3 stage outputs of the
#               MSE of the L2-normalised mean_c f^2 maps (ST off: alpha 0)
#   st + at     src/train_at.py (MyCriterion alpha 0.9): CE + 0.9 * ST(T=4) + 1000 * AT
#   fsp         README.md "[FSP]": the paper's two stages did worse, so the published numbers
#               train "with setting as same as others", one stage: CE + FSP from the first
#               epoch (src/fsp.py factor 4)
# Teacher checkpoint: best.pth (its teachers are the baselines' best weights,
# log/best_weight/...). Metric: best epoch.
# Model family: its ResNet-20/110 (hankyul2/KnowledgeDistillation src/resnet_32.py, every
# stored version: ResNet_32.make_layer's downsample is conv1x1(stride 2) + BatchNorm2d) use
# option-B shortcuts (a 1x1-convolution projection), as RepDistiller's resnet20/resnet110
# here, not akamaster's option-A zero padding (resnet20_akamaster): this script trains
# resnet20/resnet110. Its teachers are its own baselines (this recipe, 71.6 on CIFAR-100 for
# ResNet-110), so they are trained even where a release publishes the model (mdistiller's
# resnet110 is RepDistiller's 240-epoch, 74.31 teacher): ZOO=0 on the teacher jobs.
# Known differences: its stem is a 7x7 conv with padding 1 (28x28 maps after it; ours 3x3,
# 32x32) and its init Kaiming (fan_out)/Xavier. Its stored train_logit.py regresses the pooled
# features (MSE(feat_s, feat_t)) rather than the logits; the row uses --distill logits as the
# table names it. Its FSP (4 x MSE of unnormalised Gram matrices, averaged over its pairs) is
# not our FSP loss (RepDistiller's: Grams / HW between consecutive stages, summed): -b 4 keeps
# its factor, not its scale. ST+AT's 0.9 is read from MyCriterion's alpha.
# Then: python -m helper.report $SAVE --table kd_zoo_cifar10 (or kd_zoo_cifar100)
source "$(dirname "$0")/common.sh"
SCHEDULE="--epochs 200 --batch_size 128 --learning_rate 0.1 --lr_decay_epochs 100,150 --lr_decay_rate 0.1 --weight_decay 1e-4 --momentum 0.9"
note "kd_zoo_cifar10/100: teacher checkpoint best.pth (the baseline's best weights); metric: best epoch"
for D in cifar10 cifar100; do
  for M in resnet20 resnet110; do
    ZOO=0 job python train_teacher.py --model $M --dataset $D $SCHEDULE
  done
done
barrier
for D in cifar10 cifar100; do
  for M in resnet20 resnet110; do
    for trial in $(seq 1 "$TRIALS"); do
      job python train_teacher.py --model $M --dataset $D $SCHEDULE --trial "$trial"
      for method in "logits -c 1 -d 0 -b 1" "kd -c 1 -d 1 -b 0 --kd_T 4" "at -c 1 -d 0 -b 1000" \
                    "at -c 1 -d 0.9 -b 1000 --kd_T 4" "fsp -c 1 -d 0 -b 4 --fsp_one_stage"; do
        job python train_student.py --path_t "$(teacher_path $M $D best)" --dataset $D --model_s $M \
          --distill $method $SCHEDULE --trial "$trial"
      done
    done
  done
done
barrier
