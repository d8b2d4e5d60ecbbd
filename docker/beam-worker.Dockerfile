# Custom SDK container for Dataflow / portable runners: workers import pipeline and schemas.
#   docker build -f docker/beam-worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/webpairs-worker:latest .
#   python -m pipeline.curate ... --runner DataflowRunner --sdk_container_image REGION-docker.pkg.dev/PROJECT/REPO/webpairs-worker:latest
# The Beam version here must equal the one that launches the job.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
WORKDIR /opt/webpairs
COPY pyproject.toml README.md webpairs_cli.py ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY trainer ./trainer
# The pipeline never imports torch; leave it out of the worker image.
RUN pip install --no-cache-dir --no-deps . && \
    pip install --no-cache-dir "pyarrow>=14" "pillow>=10.1" "urllib3>=2,<3" "fsspec>=2023.6" "apache-beam[gcp]==${BEAM_VERSION}"
ENTRYPOINT ["/opt/apache/beam/boot"]
