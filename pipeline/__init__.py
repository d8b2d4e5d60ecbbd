"""Apache Beam jobs: URL lists in, curated WebDataset shards out.

python -m pipeline.curate --input urls.parquet --output out/ --runner DirectRunner
"""

from pipeline.startup import drop_beam_gcp_notice

drop_beam_gcp_notice()  # in every process that runs our code: pipeline/startup.py says why
