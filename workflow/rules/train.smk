rule train:
    """Deterministic training of one run (checkpoints every snapshot_every steps; resumes), then in
    the same process the full-batch snapshot of every checkpoint and the choice of x_K
    (landscope.trajectory.train.produce_run): one job instead of three saves two interpreter and
    torch start-ups per run. A run of a `source: recorded` experiment is not trained: the job
    imports what your own loop recorded."""
    input:
        recording=get_recording,
        data=get_fetch_record,
    output:
        manifest=f"{CKPT}/manifest.json",
        train="results/tables/train/experiment={experiment}/run={run}/part-00000.parquet",
        runs="results/tables/runs/experiment={experiment}/run={run}/part-00000.parquet",
        snapshots="results/tables/snapshots/experiment={experiment}/run={run}/part-00000.parquet",
        minimizer=f"{CKPT}/minimizer.pt",
        minimizer_sidecar=f"{CKPT}/minimizer.json",
        minimizers="results/tables/minimizers/experiment={experiment}/run={run}/part-00000.parquet",
    params:
        spec=get_run_spec,
        results=get_results_dir_of_output,
    log:
        "logs/train/{experiment}/{run}.log",
    benchmark:
        "results/benchmarks/train/{experiment}/{run}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=get_gpu,
        nvidia_gpu=get_gpu,
    conda:
        ENV
    script:
        "../scripts/train.py"
