# The GPU check of the trainer (bench/RESULTS-trainer.md, "On a GPU"): run on a CUDA machine from the
# repository root. Where webdataset/braceexpand are missing, carry their wheels in .gpu/.whl.
# Figures go to $OUT (or ./gpu-out).
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
set -x
[ -d .gpu/.whl ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/.whl/*.whl || exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"
timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/trainer -k "gpu or bf16 or cuda" -rs 2>&1 | tail -8
python3 bench/gpu_shards.py /tmp/shards
for extra in "" "--accum-steps 4 --loss-impl tiled --grad-checkpointing" "--compile"; do
  rm -rf /tmp/run; /usr/bin/time -f "%e s wall" timeout 150 python3 -m trainer train --data '/tmp/shards/*.tar' --output /tmp/run --model tiny --steps 60 --batch-size 128 --device cuda --precision bf16 --workers 4 --log-every 20 $extra 2>&1 | grep -E "step|error|Error|wall" | tail -5
done
timeout 60 python3 -m trainer eval --checkpoint /tmp/run --zeroshot '/tmp/shards/00000.tar' --classnames zero,one,two,three,four,five,six,seven,eight,nine --device cuda 2>&1 | tail -3
timeout 150 python3 bench/train_step.py --device cuda --precision bf16 --models tiny base --batch-sizes 256 64 --vocab-size 259 49408 --steps 10 2>&1 | tail -6 | tee $OUT/train_step.txt
