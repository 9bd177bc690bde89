#!/usr/bin/env bash
# Real tables that scikit-learn ships, written to CSV, trained by a DBN on 2 ranks: the 8×8
# digits (1,797 rows, 64 features, 10 classes) and the Wisconsin breast cancer table (569 rows,
# 30 features, 2 classes), a fifth held out; each run's classification report on stdout.
#   pip install scikit-learn && bash launch/data-tables.sh > results/data/tables.md
# Environment: HVDL_SCRATCH (default /tmp/hvdl-tables) for the CSV files. Run folders:
# results/runs/data-tables-<time>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
scratch=${HVDL_SCRATCH:-/tmp/hvdl-tables}
out=results/runs/data-tables-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$scratch"
dbn=(--model dbn_small --data.label target --data.scale minmax --data.test_fraction 0.2
     --batch_size 16 --rbm.pretrain_epochs 50 --rbm.finetune_epochs 50)
echo "# Real tables: a DBN on scikit-learn's digits and breast cancer data"
echo
echo "\`bash launch/data-tables.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), 2 ranks, $(nproc) cores," \
    "$(uname -n); commit $(git rev-parse --short HEAD)."
for table in digits breast_cancer; do
    python launch/sklearn-table.py "$table" "$scratch/$table.csv" >&2
    HVDL_NP=2 bash launch/horovodrun.sh "${dbn[@]}" --data.path "$scratch/$table.csv" \
        --results_dir "$out/$table" > "$scratch/$table.log" 2>&1
    echo
    echo "## $table"
    echo
    echo '```'
    grep -h "hvdl: data:" "$scratch/$table.log" | sed 's/^\[[0-9,]*\]<stdout>://'
    python -c "import json, sys; from hvdl.trainers.finetune import classification_report
print('\n'.join(classification_report(json.load(open(sys.argv[1]))['final']['test'])))" \
        "$out/$table"/*/metrics.json
    echo '```'
done
echo
python -m hvdl.report --compare data.path,layers --metrics final.test.accuracy,final.test.macro_f1 \
    "$out"/*/*
