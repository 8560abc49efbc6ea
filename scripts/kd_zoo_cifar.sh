#!/usr/bin/env bash
# "Knowledge Distillation" README (hankyul2/KnowledgeDistillation; it points to AberHu's
# Knowledge-Distillation-Zoo as a reference but trains with its own code): CIFAR-10/100,
# ResNet-20 -> ResNet-20 and ResNet-110 -> ResNet-110 (teacher = the baseline of the same
# architecture), best epoch, 3-run mean.
# Recipe of every row, source hankyul2/KnowledgeDistillation (HEAD f019dfc) README.md
# ("Experiment Setting"), main.py (defaults, lines 13-16) and src/train*.py: SGD lr 0.1,
# momentum 0.9 (plain: no Nesterov in any of its MyOpt), weight decay 1e-4, x0.1 after epochs
# 100 and 150, 200 epochs, batch 128, CE weight 1:
#   baseline (teacher, trial 0; students alone)   src/train.py: CE only
#   logits      src/train_logit.py line 30 + src/logits.py: CE + 1 * MSE of the *pooled
#               features* (kd_criterion(std_feat, teat_feat.detach())), not of the logits:
#               --distill l2 -c 1 -d 0 -b 1 (equal widths, no connector)
#   st          src/train_st.py + src/st.py: CE + 1 * KL(T=4, batchmean) * T^2
#   at          src/train_at.py + src/at.py: CE + 1000 * sum over the 3 stage outputs of the
#               MSE of the L2-normalised mean_c f^2 maps (ST off: alpha 0)
#   st + at     src/train_at.py (MyCriterion alpha 0.9, line 52): CE + 0.9 * ST(T=4) + 1000 * AT
#   fsp         README.md "[FSP]": the paper's two stages did worse, so the published numbers
#               train "with setting as same as others", one stage (src/train_fsp.py at 6475dcd):
#               CE + FSP() of src/fsp.py at d0ed979 (the version train_fsp.py was created with,
#               unchanged since): soft_factor 3, kd_lambda 1, mean over its 3 pairs of
#               MSE(G_s, G_t) / 3 with Grams divided by H*W, = sum_k MSE_k / 9 of our FSP loss:
#               -b 1/9. (79def73's FSP, factor 4 and unnormalised Grams, trained no published run.)
# Data (src/dataset.py lines 8 and 27-45 at 22f39c5, unchanged to f019dfc), every run:
#   --padding_mode reflect          Pad(4, padding_mode='reflect') + RandomCrop(32) + flip
#   --cifar_normalization per_dataset  CIFAR-10's own mean/std (0.4914, 0.4822, 0.4465) /
#                                   (0.2470, 0.2435, 0.2616), CIFAR-100's (0.5071, 0.4865,
#                                   0.4409) / (0.2673, 0.2564, 0.2762)
#   --eval_drop_last                drop_last=True on the test loader too: accuracy over 9,984
#                                   of the 10,000 test images (docs/fsp.md: 91.95713 = 9181/9984)
# Teacher mode (students): --teacher_train. src/ModelWrapper.py BaseModelWrapper.train
# (line 80) switches only the student (self.model.train()); the teacher is never put in eval
# mode, so it distils with its BatchNorms on batch statistics.
# Teacher checkpoint: best.pth (its teachers are the baselines' best weights,
# log/best_weight/...). Metric: best epoch.
# Selection rule of the source (src/log.py at f019dfc): the teacher is the *best* baseline run
# of that model and data set (Result.get_best_model, lines 106-112: max accuracy over all
# 'base' rows of log/result.csv), and a reported figure is the mean of the best window of 3
# consecutive runs of the same method/data set/student/teacher (get_best_result_and_idx, lines
# 88-100; its range(n - 3) never considers the last window), each run's accuracy being its
# best epoch. Here the teacher is the baseline of trial 0 and the report gives the mean of all
# TRIALS runs; with more trials the source's rule can be applied by hand to the report's runs.
# Model family: its ResNet-20/110 (hankyul2/KnowledgeDistillation src/resnet_32.py, every
# stored version: ResNet_32.make_layer's downsample is conv1x1(stride 2) + BatchNorm2d) use
# option-B shortcuts (a 1x1-convolution projection), as RepDistiller's resnet20/resnet110
# here, not akamaster's option-A zero padding (resnet20_akamaster): this script trains
# resnet20/resnet110. Its teachers are its own baselines (this recipe, 71.6 on CIFAR-100 for
# ResNet-110), so they are trained even where a release publishes the model (mdistiller's
# resnet110 is RepDistiller's 240-epoch, 74.31 teacher): ZOO=0 on the teacher jobs.
# Known differences: its stem is a 7x7 conv with padding 1 (28x28 maps after it; ours 3x3,
# 32x32) and its init Kaiming (fan_out)/Xavier. Its FSP pools only the input map of a pair
# (ours pools whichever is larger: the same on these models) and its Gram is (C_in, C_out),
# ours the transpose (the same MSE).
# Then: python -m helper.report $SAVE --table kd_zoo_cifar10 (or kd_zoo_cifar100)
source "$(dirname "$0")/common.sh"
SCHEDULE="--epochs 200 --batch_size 128 --learning_rate 0.1 --lr_decay_epochs 100,150 --lr_decay_rate 0.1 --weight_decay 1e-4 --momentum 0.9"
DATA_FLAGS="--padding_mode reflect --cifar_normalization per_dataset --eval_drop_last"
note "kd_zoo_cifar10/100: teacher checkpoint best.pth (the baseline's best weights); metric: best epoch"
for D in cifar10 cifar100; do
  for M in resnet20 resnet110; do
    ZOO=0 job python train_teacher.py --model $M --dataset $D $SCHEDULE $DATA_FLAGS
  done
done
barrier
for D in cifar10 cifar100; do
  for M in resnet20 resnet110; do
    for trial in $(seq 1 "$TRIALS"); do
      job python train_teacher.py --model $M --dataset $D $SCHEDULE $DATA_FLAGS --trial "$trial"
      for method in "l2 -c 1 -d 0 -b 1" "kd -c 1 -d 1 -b 0 --kd_T 4" "at -c 1 -d 0 -b 1000" \
                    "at -c 1 -d 0.9 -b 1000 --kd_T 4" "fsp -c 1 -d 0 -b 0.1111111111111111 --fsp_one_stage"; do
        job python train_student.py --path_t "$(teacher_path $M $D best)" --dataset $D --model_s $M \
          --distill $method --teacher_train $SCHEDULE $DATA_FLAGS --trial "$trial"
      done
    done
  done
done
barrier
