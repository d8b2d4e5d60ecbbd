"""`python -m pipeline.curate ...`: the curation job's entry point (as Dataflow users launch
it); the job itself is `pipeline.jobs.curate`."""

import sys

from pipeline.jobs.curate import main

if __name__ == "__main__":
    sys.exit(main())
