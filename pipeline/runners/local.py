"""The local default runner: Beam's FnApiRunner, the DirectRunner's batch engine, started
directly.

    p = new_pipeline(options)   # FnApiRunner for DirectRunner (the default); else as asked

Beam's DirectRunner (2.78) first tries Prism, a runner it downloads from GitHub at run time:
an unexpected download (or, behind a firewall that drops packets, a wait for its timeout),
another engine than the one this project is built and measured on (the decode worker
processes, the in-process figures in bench/), and here, offline, about a second of start-up
spent translating the job for Prism before it falls back. So a webpairs job asked to run on
the DirectRunner runs on the FnApiRunner at once, as the DirectRunner itself would for a
batch job; `--direct_running_mode` (in_memory, multi_threading, multi_processing) and
`--direct_num_workers` mean what they mean there. `--runner PrismRunner` runs a job on Prism.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

DIRECT_NAMES = (None, "DirectRunner", "SwitchingDirectRunner")


def local_runner(options: PipelineOptions) -> fn_runner.FnApiRunner | None:
    """The FnApiRunner for a batch job asked to run on the DirectRunner (or given no runner);
    None for any other runner, which Beam makes from the options as usual."""
    std = options.view_as(StandardOptions)
    if std.runner not in DIRECT_NAMES or std.streaming:
        return None
    # what the DirectRunner hands its FnApiRunner: the options, for the SDK workers to read
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def new_pipeline(options: PipelineOptions) -> beam.Pipeline:
    return beam.Pipeline(runner=local_runner(options), options=options)
