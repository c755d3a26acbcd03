#!/usr/bin/env bash
# Evaluate one variant of one model of $EXPERIMENT (default: "default") with lm-eval, in process:
#   evaluation_results/<experiment>/<model>/<method>-<variant>/{results.json,samples_<task>.jsonl}
#   bash scripts/evaluate_models.sh 135m base merged              # the untuned model (-> <model>/base/)
#   bash scripts/evaluate_models.sh 135m qlora merged             # <run>/merged/
#   bash scripts/evaluate_models.sh 135m qlora adapter            # the un-merged adapter on its NF4 base
#   EXPERIMENT=seeds bash scripts/evaluate_models.sh 135m lora merged --seed 43   # -> 135m/lora/seed-43-merged/
#   bash scripts/evaluate_models.sh 135m lora merged --limit 10 --tasks ftc_hellaswag --batch-size 4 --force
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
usage="usage: bash scripts/evaluate_models.sh MODEL base|METHOD merged|adapter [--seed K] [--tasks a,b] [--limit N] [--batch-size N] [--force]   (EXPERIMENT=${EXPERIMENT:-default})"
if [ $# -lt 3 ]; then
  echo "$usage" >&2
  exit 2
fi
case "$3" in
  merged|adapter) ;;
  *) echo "error: variant '$3' is not merged or adapter; $usage" >&2; exit 2 ;;
esac
exec "${PYTHON:-.venv/bin/python}" -m ftcompare evaluate --model "$1" --method "$2" --variant "$3" "${@:4}"
