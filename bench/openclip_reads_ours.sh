#!/usr/bin/env bash
# OpenCLIP's own trainer reads a `webpairs curate` output unchanged: no --train-num-samples,
# the sample count comes from the sizes.json written beside the shards (issue 17, item 5).
#
#   bash bench/openclip_reads_ours.sh [OPENCLIP_PYTHON]     # default /tmp/openclip-venv/bin/python
#
# 1. 300 digit images (scikit-learn's bundled 8x8 digits, 32 px PNGs, captions "a photo of the
#    digit seven") as WebDataset tars; 2. `webpairs curate` over them (shards + sizes.json);
# 3. open_clip_train.main, on CPU, a tiny ViT config, one epoch over our shards (320 samples
#    an epoch: the 300 of sizes.json rounded up to whole batches); 4. the control: without
#    sizes.json the same command stops. About a minute on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENCLIP_PY=${1:-/tmp/openclip-venv/bin/python}
WORK=${WORK:-/tmp/openclip-reads-ours}
rm -rf "$WORK" && mkdir -p "$WORK/input"
export PYTHONPATH=$PWD

.venv/bin/python - "$WORK/input" <<'PY'
import io, sys
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_digits

names = "zero one two three four five six seven eight nine".split()
digits = load_digits()
with wds.ShardWriter(f"{sys.argv[1]}/%05d.tar", maxcount=100) as sink:
    for i in range(300):
        pixels = (digits.images[i] * (255 / 16)).astype("uint8")
        image = Image.fromarray(pixels, mode="L").resize((32, 32), Image.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        label = int(digits.target[i])
        sink.write({"__key__": f"digit{i:05d}", "png": buf.getvalue(),
                    "txt": f"a photo of the digit {names[label]}"})
PY

.venv/bin/python -m pipeline.curate --input "$WORK/input/*.tar" --input-format webdataset \
    --output "$WORK/out" --recipe none --samples-per-shard 64 --progress-every 0
cat "$WORK/out/shards/sizes.json"; echo
LAST=$(ls "$WORK/out/shards" | grep '\.tar$' | sort | tail -n 1 | cut -d. -f1)

# a tiny OpenCLIP model config (open_clip/model_configs/*.json layout), registered beside its own
mkdir -p "$WORK/configs"
cat > "$WORK/configs/oc-bench-tiny.json" <<'JSON'
{"embed_dim": 64,
 "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
JSON

# OpenCLIP's trainer as its users run it, with no --train-num-samples
"$OPENCLIP_PY" -c "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); \
from open_clip_train.main import main; main(sys.argv[1:])" "$WORK/configs" \
    --train-data "$WORK/out/shards/{00000..$LAST}.tar" --dataset-type webdataset \
    --batch-size 32 --epochs 1 --lr 1e-3 --warmup 2 --workers 1 --model oc-bench-tiny \
    --precision fp32 --device cpu --logs "$WORK/logs" --name run --log-every-n-steps 1 \
    --save-frequency 1 --report-to "" 2>&1 | tee "$WORK/openclip.log" \
    | grep -E "num_samples|Train Epoch|Error|error" || true

test -f "$WORK/logs/run/checkpoints/epoch_1.pt" && echo "OpenCLIP trained one epoch on our shards:" \
    "$WORK/logs/run/checkpoints/epoch_1.pt"

# the control: the same command without sizes.json stops at once, asking for the count
mv "$WORK/out/shards/sizes.json" "$WORK/sizes.json.away"
CONTROL=$("$OPENCLIP_PY" -c "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); \
from open_clip_train.main import main; main(sys.argv[1:])" "$WORK/configs" \
    --train-data "$WORK/out/shards/{00000..$LAST}.tar" --dataset-type webdataset \
    --batch-size 32 --epochs 1 --workers 1 --model oc-bench-tiny --precision fp32 \
    --device cpu --logs "$WORK/logs" --name control --report-to "" 2>&1 || true)
grep -q "the number of dataset samples must be specified" <<<"$CONTROL" \
    && echo "without sizes.json: OpenCLIP asks for --train-num-samples, as expected"
mv "$WORK/sizes.json.away" "$WORK/out/shards/sizes.json"
