"""Apache Beam jobs: URL lists in, curated WebDataset shards out.

python -m pipeline.curate --input urls.parquet --output out/ --runner DirectRunner
"""
