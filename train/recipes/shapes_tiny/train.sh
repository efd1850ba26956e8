#!/bin/sh
# Trains the built-in shapes model (infer/default_model) from nothing but this project's tools, on a
# CPU. Usage: train/recipes/shapes_tiny/train.sh [WORK_DIR]   (default: shapes_run; about 50 minutes on
# 2 CPU cores, see infer/default_model/README.md). The result is WORK_DIR/final, a diffusers folder.
#   SD_BIN     where sd_data / sd_convert / sd_train are (default: build/tools)
#   VAE_STEPS, UNET_STEPS, UNET2_STEPS   override the step counts (the shipped model used the defaults)
#   STAGES     which stages run (default: "data init vae unet unet2"; the UNet stage starts from
#              WORK_DIR/vae, the second one from WORK_DIR/model)
#   NPROC      processes of the UNet stage (default 2, under mpirun with one thread each: on a small
#              model that is 1.3x faster than one process with two threads); without mpirun (or NPROC=1)
#              one process takes the whole batch, which trains the same up to float rounding
set -eu
RECIPE=$(cd "$(dirname "$0")" && pwd)
BIN=${SD_BIN:-build/tools}
OUT=${1:-shapes_run}
VAE_STEPS=${VAE_STEPS:-3000}
UNET_STEPS=${UNET_STEPS:-2000}
NPROC=${NPROC:-2}
UNET2_STEPS=${UNET2_STEPS:-1500}
STAGES=${STAGES:-data init vae unet unet2}
stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# 1. 4,000 captioned 64x64 images ("a small red circle on a blue background, top left").
stage data && "$BIN/sd_data" generate --output_dir "$OUT/data" --num_images 4000 --seed 1 --size 64 --overwrite

# 2. A pipeline of the real SD1 classes with random weights, from the configs in this folder.
stage init && "$BIN/sd_convert" --init --from "$RECIPE" --to "$OUT/init" --seed 0

# 3. The autoencoder, for reconstruction (L2 + a small KL). It is fully convolutional, so it trains
#    on the images resized to 32x32 (4x cheaper per step) and works on 64x64 ones.
stage vae && "$BIN/sd_train" --method vae --pretrained_model_name_or_path "$OUT/init" --train_data_dir "$OUT/data" \
  --resolution 32 --train_batch_size 8 --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 100 \
  --max_train_steps "$VAE_STEPS" --vae_loss l2 --kl_weight 1e-6 --max_grad_norm 1.0 --seed 0 \
  --checkpointing_steps 1000 --save_precision fp32 --report_to none --output_dir "$OUT/vae"

# 4. UNet and text encoder together on the 64x64 images, the VAE frozen; saved in fp16 (8 MB). The
#    batch of 32 is split over the processes.
if [ "$NPROC" -gt 1 ] && command -v mpirun >/dev/null 2>&1; then
  # Open MPI refuses root (containers) unless told, and more processes than cores unless oversubscribed.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
  LAUNCH="mpirun --oversubscribe -np $NPROC -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY"
else
  NPROC=1 LAUNCH=""
fi
stage unet && $LAUNCH "$BIN/sd_train" --method full --train_text_encoder --pretrained_model_name_or_path "$OUT/vae" \
  --train_data_dir "$OUT/data" --resolution 64 --center_crop --train_batch_size $((32 / NPROC)) \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 100 --max_train_steps "$UNET_STEPS" \
  --prediction_type v_prediction --snr_gamma 5.0 --caption_dropout 0.1 --max_grad_norm 1.0 --seed 0 \
  --checkpointing_steps 500 \
  --cache_latents --save_precision fp16 --report_to none --output_dir "$OUT/model"

# 5. More of the same from the result, at half the learning rate (the loss still fell when step 4's
#    cosine schedule ended; a second schedule rather than a longer first one, so step 4's log and
#    checkpoints stay as they were).
stage unet2 && $LAUNCH "$BIN/sd_train" --method full --train_text_encoder --pretrained_model_name_or_path "$OUT/model" \
  --train_data_dir "$OUT/data" --resolution 64 --center_crop --train_batch_size $((32 / NPROC)) \
  --learning_rate 5e-4 --lr_scheduler cosine --lr_warmup_steps 50 --max_train_steps "$UNET2_STEPS" \
  --prediction_type v_prediction --snr_gamma 5.0 --caption_dropout 0.1 --max_grad_norm 1.0 --seed 1 \
  --checkpointing_steps 500 --cache_latents --save_precision fp16 --report_to none --output_dir "$OUT/final"
echo "done: $OUT/final"
