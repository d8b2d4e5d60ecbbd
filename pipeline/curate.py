"""`python -m pipeline.curate ...`: the curation job's entry point (as Dataflow users launch
it, and `webpairs curate` through it); the job itself is `pipeline.jobs.curate`."""

import sys

from pipeline.startup import job_imports

with job_imports():  # Beam imported quietly, the imports past the collector (startup.py)
    from pipeline.jobs.curate import main

if __name__ == "__main__":
    sys.exit(main())
