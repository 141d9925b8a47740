"""The paper's sweep (and cohort inference) at cluster scale: idempotent, resumable jobs handed to
an existing engine (SLURM through submitit, or Ray), never a queue or pool of our own.

    sam_l1dfl.cluster.resources   Resources (GPUs, CPUs, memory, time, partition, account) per job
    sam_l1dfl.cluster.jobs        Job, run_job (lock, fingerprint, skip / resume / refuse), job_state
    sam_l1dfl.cluster.launch      launch(jobs, "local" | "submitit" | "ray"), describe_submission, SweepMonitor

submitit and Ray are optional extras (``pip install 'sam-l1dfl[slurm]'`` / ``'sam-l1dfl[ray]'``),
imported only when a launcher needs them.  See docs/cluster.md.
"""
