"""`medsr batch`: every scan file and every section-series folder under INPUT_ROOT becomes an
output under OUTPUT_ROOT at the same relative path. `plan` decides what to do (and what a rerun
skips), `run` does it, locally or on a Dask cluster (see `medsr.batch.run`)."""

from medsr.batch.plan import MANIFEST, BatchPlan, OutputCollisionError, Task, plan_batch
from medsr.batch.run import process_one, run_batch

__all__ = [
    "MANIFEST",
    "BatchPlan",
    "OutputCollisionError",
    "Task",
    "plan_batch",
    "process_one",
    "run_batch",
]
