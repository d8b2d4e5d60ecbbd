# Trainer image: CUDA PyTorch with the project installed; the entrypoint is torchrun.
#
#   docker build -f docker/trainer.Dockerfile -t webpairs-trainer:0.1.0 .
#   docker run --gpus all --ipc=host webpairs-trainer:0.1.0 --nproc-per-node 8 -m trainer train \
#       --data gs://bucket/out/manifest.json --output /runs/b16 --model base --batch-size 256
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
WORKDIR /opt/webpairs
COPY pyproject.toml README.md webpairs_cli.py ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY trainer ./trainer
# torch comes from the base image (it must satisfy pyproject's torch floor: tests/test_docker.py);
# the rest of the trainer's needs are small.
RUN pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir "webdataset>=0.2.86,<2" "braceexpand>=0.1.7,<1" "tokenizers>=0.15,<1" \
        "safetensors>=0.4,<1" "ftfy>=6.1,<7" \
        "pillow>=10.1,<13" "numpy>=1.24,<3" "pyarrow>=14,<30" "fsspec[gcs,s3]>=2023.6"
# --report-to tensorboard (the default)
RUN pip install --no-cache-dir "tensorboard>=2.14,<3"
ENTRYPOINT ["torchrun"]
