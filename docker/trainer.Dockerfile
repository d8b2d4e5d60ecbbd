# Trainer image for multi-node GPU training with torchrun.
#   docker build -f docker/trainer.Dockerfile -t webpairs-trainer .
#   docker run --gpus all webpairs-trainer torchrun --nproc-per-node 8 -m trainer train --data gs://bucket/out/manifest.json ...
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /opt/webpairs
COPY pyproject.toml README.md webpairs_cli.py ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY trainer ./trainer
RUN pip install --no-cache-dir . "fsspec[gcs,s3]"
ENTRYPOINT []
