# Beam SDK worker image: the project installed on the official Beam Python SDK image of the same
# Beam version that launches the job. Use it as Dataflow's --sdk_container_image, or as the
# environment of Flink/Spark portable runners (--environment_type=DOCKER --environment_config=IMAGE).
#
#   docker build -f docker/pipeline.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/webpairs-pipeline:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/webpairs-pipeline:0.1.0
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
ARG BEAM_VERSION
WORKDIR /opt/webpairs
COPY pyproject.toml README.md webpairs_cli.py ./
COPY schemas ./schemas
COPY pipeline ./pipeline
COPY trainer ./trainer
# The pipeline never imports torch (scoring loads it lazily): leave torch out of the worker image.
RUN pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir "apache-beam[gcp,aws]==${BEAM_VERSION}" "pyarrow>=14,<30" "pillow>=10.1,<13" \
        "urllib3>=2,<3" "fsspec>=2023.6" "webdataset>=0.2.86,<2" "braceexpand>=0.1.7,<1" "ftfy>=6.1,<7" \
        "lingua-language-detector>=2,<3" "datasketch>=1.6,<3" "pyyaml>=6,<7" "numpy>=1.24,<3" \
        "protego>=0.3.1,<1"
ENTRYPOINT ["/opt/apache/beam/boot"]
