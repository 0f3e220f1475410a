#!/bin/bash
# PixelCLIP on several machines with SLURM: one task per node, each starting one training process
# per GPU with tools/train_net.py (machine rank = SLURM_NODEID, rendezvous on the first node).
#
#   sbatch tools/slurm_train.sh configs/pixelclip_vitb16_sa1b_bs48_10k.yaml \
#       DATASETS.SA1B.SHARDS "/data/sa1b/sa_{000000..000049}.tar" OUTPUT_DIR /shared/pixelclip/run1
#
# Trailing arguments are config overrides. OUTPUT_DIR and the shards must be at the same path on
# every node. Submitting the same command again resumes from the last checkpoint (--resume).
# Nodes and GPUs: the #SBATCH lines below, or `sbatch --nodes 4 --gpus-per-node 4 ...`.
# MASTER_PORT overrides the rendezvous port (default: 20000 + job id modulo 20000).
#SBATCH --job-name=pixelclip
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

config=${1:?usage: sbatch tools/slurm_train.sh CONFIG [KEY VALUE ...]}
shift
: "${SLURM_JOB_ID:?run this script with sbatch (or inside an allocation)}"
first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export PIXELCLIP_DIST_URL="tcp://${first_node}:${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export PIXELCLIP_GPUS="${SLURM_GPUS_ON_NODE:-8}"
cd "${SLURM_SUBMIT_DIR:-.}"
echo "pixelclip: ${SLURM_NNODES} nodes x ${PIXELCLIP_GPUS} GPUs, rendezvous ${PIXELCLIP_DIST_URL}"

# SLURM_NODEID differs per task: it is read inside each task, not here.
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
    exec python tools/train_net.py --config-file "$0" --resume \
        --num-gpus "$PIXELCLIP_GPUS" --num-machines "$SLURM_NNODES" \
        --machine-rank "$SLURM_NODEID" --dist-url "$PIXELCLIP_DIST_URL" "$@"' "$config" "$@"
