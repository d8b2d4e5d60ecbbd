"""CPU per sample of writing a shard's tar: pipeline.io.shards.write_tar (headers built in one
go) against tarfile's own "w|" PAX writer, which it reproduces byte for byte.

    PYTHONPATH=. .venv/bin/python bench/tar_writer.py --samples 500 --image-kb 37

Samples are random bytes (the writer never looks inside) with a hex key, a caption and the
usual json; both writers hash what they write (sha256, as the manifest needs). Best of
--repeat; the outputs are checked equal.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import sys
import tarfile
import time

from pipeline.io.shards import TAR_MTIME, _HashingWriter, json_row, write_tar
from schemas import sample_to_members


def tarfile_tar(samples: list[dict], fileobj) -> tuple[int, str]:
    out = _HashingWriter(fileobj)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for row in samples:
            for m in sample_to_members(
                row["key"], row["_image"], row["_ext"], row["caption"], json_row(row)
            ):
                info = tarfile.TarInfo(m.name)
                info.size, info.mtime, info.mode = len(m.data), TAR_MTIME, 0o644
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(m.data))
    return out.size, out.sha.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--image-kb", type=int, default=37)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    samples = [
        {
            "key": hashlib.sha256(str(i).encode()).hexdigest()[:32],
            "_image": rng.randbytes(args.image_kb * 1024),
            "_ext": "jpg",
            "caption": f"a photo of thing {i}",
            "url": f"http://example.com/{i}.jpg",
            "status": "ok",
            "width": 256,
            "height": 192,
        }
        for i in range(args.samples)
    ]
    results = {}
    for name, writer in (("write_tar", write_tar), ("tarfile", tarfile_tar)):
        best = float("inf")
        for _ in range(args.repeat):
            buf = io.BytesIO()
            start = time.process_time()
            writer(samples, buf)
            best = min(best, time.process_time() - start)
        results[name] = (best, buf.getvalue())
    assert results["write_tar"][1] == results["tarfile"][1], "the tars differ"
    for name, (best, data) in results.items():
        ms = 1000 * best / args.samples
        print(f"{name:10} {ms:.3f} CPU-ms a sample ({len(data) >> 20} MiB, best of {args.repeat})")
    print(f"ratio {results['write_tar'][0] / results['tarfile'][0]:.2f} (same bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
