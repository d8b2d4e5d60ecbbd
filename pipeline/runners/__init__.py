"""Runners the jobs run on beyond Beam's own: the Dask runner (dask_runner) and the cluster it
joins or starts for a job (cluster)."""
