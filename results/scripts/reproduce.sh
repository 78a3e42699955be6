#!/usr/bin/env bash
# `make reproduce`: every experiment of results/ from scratch (training, analysis, figures, reports, the Deep RFM
# feature sweep, the front page's tables), each step skipped when its output is complete, so a rerun after an
# interruption resumes where it stopped (training resumes from each run's checkpoints/last.pt).
#
#   DNC_SCALE   cpu (default): the settings of the committed results/ (8,000 MNIST digits, analysis every 10
#                 epochs to 250, then every 50); hours on 2 CPU cores, see results/README.md
#               paper: the paper's scale, 50,000 images and every checkpoint analysed (a GPU; the full MNIST files)
#               smoke: a few epochs on 500 images, minutes: checks that the pipeline runs, not the science
#   DNC_DATA    the torchvision dataset root (default ../shared/data)
#   DNC_DEVICE  auto (default) | cpu | cuda
#   DNC_JOBS    sweeps' jobs side by side through Hydra's joblib launcher (default 1: one after the other)
#   RUNS, RESULTS  where runs are trained (default runs/) and what is kept is copied (default results/; with
#               DNC_SCALE=smoke, runs/smoke and runs/smoke/results, so that the committed results stay as they are)
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${DNC_SCALE:-cpu}; DATA=${DNC_DATA:-../shared/data}; DEVICE=${DNC_DEVICE:-auto}
if [[ "$SCALE" == smoke ]]; then RUNS=${RUNS:-runs/smoke}; RESULTS=${RESULTS:-$RUNS/results}
else RUNS=${RUNS:-runs}; RESULTS=${RESULTS:-results}; fi
launcher=(); [[ "${DNC_JOBS:-1}" -gt 1 ]] && launcher=(hydra/launcher=joblib "hydra.launcher.n_jobs=$DNC_JOBS")
DNC=${DNC:-.venv/bin/dnc}; PY=${PY:-.venv/bin/python}
common=(dataset=mnist "dataset.root=$DATA" dataset.download=false "device=$DEVICE" progress=false)
case "$SCALE" in
  cpu)   mlp=(dataset.n_train=8000 epochs=1000 epochs_after_tpt=250); ablation=(dataset.n_train=2000 epochs=1000
           epochs_after_tpt=250 checkpoints.every=25); random=(dataset.n_train=1000); rfm=(dataset.n_train=8000)
         epochs_mlp="10 50"; epochs_ablation="50 50" ;;
  paper) mlp=(dataset.n_train=50000 epochs=1000 epochs_after_tpt=250); ablation=(dataset.n_train=50000 epochs=1000
           epochs_after_tpt=250); random=(dataset.n_train=10000); rfm=(dataset.n_train=50000)
         epochs_mlp=""; epochs_ablation="" ;;
  smoke) mlp=(dataset.n_train=500 dataset.n_test=200 epochs=3); ablation=(dataset.n_train=500 dataset.n_test=200
           epochs=2); random=(dataset.n_train=500 dataset.n_test=200 epochs=3); rfm=(dataset.n_train=500
           dataset.n_test=200 model.depth=3); epochs_mlp=""; epochs_ablation="" ;;
  *) echo "reproduce: DNC_SCALE=$SCALE is not one of cpu, paper, smoke" >&2; exit 2 ;;
esac
[[ -d "$DATA/MNIST" ]] || { echo "reproduce: DNC_DATA=$DATA holds no MNIST/ (the torchvision layout)" >&2; exit 2; }

trained() {  # every run below $1 finished (summary.json status done), and at least $2 of them
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
runs = [p for p in Path(sys.argv[1]).rglob("summary.json") if ".hydra" not in p.parts] if Path(sys.argv[1]).is_dir() else []
done = [p for p in runs if json.loads(p.read_text()).get("status") == "done"]
sys.exit(0 if len(done) >= int(sys.argv[2]) and len(done) == len(runs) else 1)
EOF
}
step() { echo "== reproduce ($SCALE): $*"; }
analyze() {  # $1 folder, $2 "early late" epoch spacing or empty for every checkpoint
  local epochs=()
  [[ -n "$2" ]] && epochs=("epochs=$("$PY" results/scripts/analysis_epochs.py "$1" $2)")
  "$DNC" analyze "run_dir=$1" "device=$DEVICE" progress=false "${epochs[@]}"
}

step "1. the paper's MLP, 3 seeds"
trained "$RUNS/mnist_mlp" 3 || "$DNC" train -m experiment=paper_mlp "${common[@]}" "${mlp[@]}" seed=0,1,2 \
    "${launcher[@]}" "hydra.sweep.dir=$RUNS/mnist_mlp"
analyze "$RUNS/mnist_mlp" "$epochs_mlp"
"$DNC" plot "run_dir=$RUNS/mnist_mlp"
"$DNC" report "run_dir=$RUNS/mnist_mlp" && "$DNC" report "run_dir=$RUNS/mnist_mlp" until_epoch=250
"$PY" results/scripts/test_standardization.py "$RUNS"/mnist_mlp/[0-9]* > "$RUNS/mnist_mlp/test_standardization.md"
results/scripts/collect.sh "$RUNS/mnist_mlp" "$RESULTS/mnist_mlp"

step "2. the ablation, 6 settings x 2 seeds"
trained "$RUNS/mnist_mlp_ablation" 12 || "$DNC" train -m experiment=paper_mlp "${common[@]}" "${ablation[@]}" \
    '+ablation=baseline,no_reset,lr_3e-4,gain_1,standardize_global,standardize_none' seed=0,1 \
    "${launcher[@]}" "hydra.sweep.dir=$RUNS/mnist_mlp_ablation"
analyze "$RUNS/mnist_mlp_ablation" "$epochs_ablation"
"$DNC" plot "run_dir=$RUNS/mnist_mlp_ablation" figures=[compare] && "$DNC" report "run_dir=$RUNS/mnist_mlp_ablation"
"$PY" results/scripts/ablation_table.py "$RUNS/mnist_mlp_ablation" > "$RUNS/mnist_mlp_ablation/ablation.md"
results/scripts/collect.sh "$RUNS/mnist_mlp_ablation" "$RESULTS/mnist_mlp_ablation"

step "3. random labels"
trained "$RUNS/mnist_random_labels" 1 || "$DNC" train experiment=random_labels_mlp "${common[@]}" "${random[@]}" \
    "hydra.run.dir=$RUNS/mnist_random_labels"
analyze "$RUNS/mnist_random_labels" ""
"$DNC" plot "run_dir=$RUNS/mnist_random_labels" && "$DNC" report "run_dir=$RUNS/mnist_random_labels"
results/scripts/collect.sh "$RUNS/mnist_random_labels" "$RESULTS/mnist_random_labels"

step "4. Deep RFM at the official settings, and across the official sigmas and ReLU features"
trained "$RUNS/mnist_deep_rfm" 1 || "$DNC" train experiment=paper_deep_rfm "${common[@]}" "${rfm[@]}" \
    "hydra.run.dir=$RUNS/mnist_deep_rfm"
trained "$RUNS/mnist_deep_rfm_features" 4 || "$DNC" train +sweep=deep_rfm_features experiment=paper_deep_rfm \
    "${common[@]}" "${rfm[@]}" "${launcher[@]}" "hydra.sweep.dir=$RUNS/mnist_deep_rfm_features"
for folder in mnist_deep_rfm mnist_deep_rfm_features; do
  analyze "$RUNS/$folder" "" && "$DNC" plot "run_dir=$RUNS/$folder"
done
"$DNC" report "run_dir=$RUNS/mnist_deep_rfm"
for run in "$RUNS"/mnist_deep_rfm_features/[0-9]*; do "$DNC" report "run_dir=$run"; done
"$PY" results/scripts/rfm_features_table.py "$RUNS/mnist_deep_rfm_features" > "$RUNS/mnist_deep_rfm_features/features.md"
results/scripts/collect.sh "$RUNS/mnist_deep_rfm" "$RESULTS/mnist_deep_rfm"
results/scripts/collect.sh "$RUNS/mnist_deep_rfm_features" "$RESULTS/mnist_deep_rfm_features"

step "5. the front page's tables: $RESULTS/claims.md (README.md shows them between its claims markers)"
"$PY" results/scripts/front_page.py "$RESULTS" > "$RESULTS/claims.md"
if [[ "$RESULTS" == results ]]; then
  "$PY" - <<'EOF'
from pathlib import Path
readme, table = Path("README.md"), Path("results/claims.md").read_text()
start, end = "<!-- claims: results/scripts/front_page.py -->", "<!-- /claims -->"
text = readme.read_text()
head, rest = text.split(start, 1)
readme.write_text(head + start + "\n" + table + rest[rest.index(end):])
EOF
fi
step "done: compare with the committed results by \`git diff --stat $RESULTS README.md\`"
