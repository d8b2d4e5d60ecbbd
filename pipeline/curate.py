"""`python -m pipeline.curate ...`: the curation job's entry point (as Dataflow users launch
it, and `webpairs curate` through it); the job itself is `pipeline.jobs.curate`."""

import gc
import sys

# The job's modules (Apache Beam's above all) are imported once and live as long as the
# process. The cyclic collector would scan their ~100k objects twice on the way, for nothing
# (0.15 s of about 1.1 s of imports, bench/RESULTS-crawl.md); frozen after, it never scans them
# again. Objects that are freed are still freed: only the cycle search skips them.
_collecting = gc.isenabled()
gc.disable()
try:
    from pipeline.jobs.curate import main
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

if __name__ == "__main__":
    sys.exit(main())
