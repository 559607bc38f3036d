#!/bin/bash
# AutoAttack (torchattacks, standard budgets) on every .npz in DIR on a GPU machine
# that has PyTorch but not TensorFlow; PROCS processes share the GPU (a model this
# small leaves it idle between kernel launches). torchattacks travels as a wheel in
# .whl/. Writes $OUT/aa_NAME_P.json (NAME = DIR's name); the first process first
# times the two suites alone on FIRST (a clean points-per-second figure).
#   bash benchmarks/torch_bridge/device_autoattack.sh .aa/overfit 4 pgd-at__last.npz
set -u
dir=$1; procs=${2:-4}; first=${3:-}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
name=$(basename "$dir")
script=benchmarks/torch_bridge/autoattack_torch.py
if [ -n "$first" ]; then
    for suite in standard torchattacks-default; do
        python3 $script "$dir/$first" --eps 0.1 --suite $suite --out "$OUT/alone_${name}_$suite.json" 2>&1 | grep -v "^Failed to set"
    done
fi
# DIR/order.txt, if there, lists the files in the order to attack them (most
# important first: file i goes to process i % PROCS, and a cut-short call keeps
# every model finished before the cut).
if [ -f "$dir/order.txt" ]; then
    mapfile -t files < <(sed "s|^|$dir/|" "$dir/order.txt")
else
    files=("$dir"/*.npz)
fi
for ((p = 0; p < procs; p++)); do
    chunk=()
    for ((i = p; i < ${#files[@]}; i += procs)); do chunk+=("${files[i]}"); done
    if [ ${#chunk[@]} -gt 0 ]; then
        python3 $script "${chunk[@]}" --eps 0.1 --out "$OUT/aa_${name}_$p.json" 2>&1 | sed "s/^/[$p] /" &
    fi
done
wait
