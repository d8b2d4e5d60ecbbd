# Beam SDK worker image: the project installed on the official Beam Python SDK image of the same
# Beam version that launches the job. Use it as Dataflow's --sdk_container_image, as the
# environment of Flink/Spark portable runners (--environment_type=DOCKER --environment_config=IMAGE),
# or to run dask workers for --runner dask (docs/runners.md):
#   docker run --network host --entrypoint dask IMAGE worker tcp://SCHEDULER:8786
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
# The project's own dependency list (pyproject.toml), less torch: the pipeline never imports
# torch (scoring loads it lazily), so the worker image leaves it out.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('torch')))" > /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir -r /tmp/requirements.txt "apache-beam[gcp,aws,dask]==${BEAM_VERSION}"
ENTRYPOINT ["/opt/apache/beam/boot"]
