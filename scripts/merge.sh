#!/usr/bin/env bash
# Merge a trained (model, method) of $EXPERIMENT into a plain checkpoint: models/<experiment>/<model>/<method>/merged/
#   bash scripts/merge.sh 135m qlora
#   EXPERIMENT=seeds bash scripts/merge.sh 135m qlora --seed 43   # one seed of an experiment with train.seeds
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -ne 2 ] && ! { [ $# -eq 4 ] && [ "$3" = --seed ]; }; then
  echo "usage: bash scripts/merge.sh MODEL METHOD [--seed K]   (EXPERIMENT=${EXPERIMENT:-default})" >&2
  exit 2
fi
exec "${PYTHON:-.venv/bin/python}" -m ftcompare merge --model "$1" --method "$2" "${@:3}"
