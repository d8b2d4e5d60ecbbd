"""Runners the jobs run on beyond Beam's own: the Dask runner (dask_runner: the Beam runner;
dask_graph: the pipeline translated to a dask task graph; dask_tasks: what the tasks run on
the workers) and the cluster a job joins or starts (cluster: --dask-address, --dask-workers)."""
