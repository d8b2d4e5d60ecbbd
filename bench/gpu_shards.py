"""Digit shards for bench/gpu_check.sh (no pipeline needed): 4 tars of scikit-learn's digits as
32 px PNGs with a caption and a class label.

    python bench/gpu_shards.py /tmp/shards
"""

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
d = load_digits()
for s in range(4):
    with tarfile.open(out / f"{s:05d}.tar", "w") as tar:
        for i in range(s, len(d.images), 4):
            img = Image.fromarray((255 - d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "PNG")
            caption = f"a handwritten {names[d.target[i]]}".encode()
            label = str(d.target[i]).encode()
            for ext, data in (("png", buf.getvalue()), ("txt", caption), ("cls", label)):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
