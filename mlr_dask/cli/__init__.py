"""The ``mlr-dask`` command line: one module per group of subcommands."""
