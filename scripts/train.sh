#!/usr/bin/env bash
# Train one (model, method) of the experiment $EXPERIMENT (default: "default").
#   bash scripts/train.sh 135m qlora                      # configs/models/135m.yaml x configs/methods/qlora.yaml
#   bash scripts/train.sh 135m lora train.max_steps=5     # any section.key=value override
#   EXPERIMENT=seeds bash scripts/train.sh 135m lora --seed 43   # one seed of an experiment with train.seeds
#   LAUNCH="accelerate launch --config_file configs/accelerate/ddp.yaml" bash scripts/train.sh 1b lora
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/train.sh MODEL METHOD [--seed K] [section.key=value ...]   (EXPERIMENT=${EXPERIMENT:-default})" >&2
  exit 2
fi
# shellcheck disable=SC2086  # LAUNCH is a command line on purpose
exec ${LAUNCH:-${PYTHON:-.venv/bin/python}} -m ftcompare train --model "$1" --method "$2" "${@:3}"
