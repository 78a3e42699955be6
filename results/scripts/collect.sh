#!/usr/bin/env bash
# Copy what results/ keeps of a run or sweep folder: configs, logs, tables, figures and reports; no checkpoints,
# labels or Gram samples (they are large and every table and figure is already derived from them).
#   results/scripts/collect.sh runs/mnist_mlp results/mnist_mlp
set -euo pipefail
src=${1:?source run or sweep folder}; dst=${2:?destination}
rm -rf "$dst"; mkdir -p "$dst"
(cd "$src" && find . \( -name checkpoints -o -name .submitit \) -prune -o -type f \( \
    -name config_resolved.yaml -o -name summary.json -o -name train_log.csv -o -name rfm_log.csv \
    -o -name multirun.yaml -o -path '*/.hydra/overrides.yaml' -o -name 'report*.md' -o -name '*.png' \
    -o -name ablation.md -o -name features.md -o -name test_standardization.md \
    -o -path '*/analysis/*.csv' -o -path '*/analysis/*.parquet' -o -path '*/analysis/*.md' \
    -o -path '*/analysis/settings.json' -o -path './figures/*.pdf' \) -print) |
  while read -r f; do
    # a sweep's combined metrics.csv repeats its runs' tables: leave it out
    [[ "$f" == ./analysis/metrics.csv && -f "$src/multirun.yaml" ]] && continue
    mkdir -p "$dst/$(dirname "$f")"; cp "$src/$f" "$dst/$f"
  done
du -sh "$dst"
