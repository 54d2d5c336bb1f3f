#!/bin/bash
# One multi-node DDP training as a plain Slurm batch job (docs/cluster.md):
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 scripts/sbatch_ddp.sh \
#       experiment=gpt_wikitext2 trainer.max_steps=20000
#
# srun starts one task per device; Lightning's SLURMEnvironment reads the ranks and the master
# address from Slurm (no torchrun, no Lightning re-launch), so trainer.devices must equal
# --ntasks-per-node and trainer.num_nodes --nodes (set below from Slurm's own variables).
#
# Preemption, one owner: Slurm signals this batch shell (B:USR1) 120 s before the time limit; the
# trap requeues the job, Slurm stops the training steps, and the requeued job runs this script
# again: resume=auto continues the run from its checkpoints/last.ckpt in the same run directory and
# W&B run (steps since that checkpoint are trained again). Lightning's own auto-requeue is off
# inside Slurm (experiments/launch.py: cluster_plugins). To preempt by hand:
#   scancel --batch --signal=USR1 <jobid>
#
#SBATCH --job-name=lhp-ddp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/slurm/%x-%j.out
set -euo pipefail

PY=${LHP_PYTHON:-python}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

trap 'echo "sbatch_ddp: USR1: requeueing job $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"' USR1

# in the background + wait, so the trap runs as soon as the signal arrives
srun --kill-on-bad-exit=1 "$PY" -m experiments.train trainer=ddp \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" trainer.num_nodes="${SLURM_NNODES}" \
    resume=auto "$@" &
pid=$!
# wait returns early when the trap fires; keep waiting until the step ends
until wait "$pid"; do
    kill -0 "$pid" 2>/dev/null || exit 1
done
