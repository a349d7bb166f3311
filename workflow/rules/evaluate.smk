rule evaluate:
    """Replay one segment with the same batches; exact per-step quantities against x_K; drift check.
    The job also keeps, in the run folder, the iterates inside the segment that the run's loss
    surfaces need (params.path_points: the run's surfaces.path_points, 0 when it gets no surfaces;
    the file is empty when the segment holds none), so the surfaces job replays nothing. Changing
    surfaces.path_points (or surfaces.enabled / seeds, which decide whether the run gets surfaces)
    therefore re-runs the evaluate jobs of the runs concerned; the other surfaces settings do not."""
    input:
        manifest=get_manifest,
        minimizer=f"{CKPT}/minimizer.pt",
        minimizer_sidecar=f"{CKPT}/minimizer.json",
    output:
        steps="results/tables/steps/experiment={experiment}/run={run}/part-{segment}.parquet",
        directions="results/tables/directions/experiment={experiment}/run={run}/part-{segment}.parquet",
        drift="results/tables/drift/experiment={experiment}/run={run}/part-{segment}.parquet",
        path_iterates=f"{CKPT}/path-segment={{segment}}.pt",
        path_iterates_sidecar=f"{CKPT}/path-segment={{segment}}.json",
    params:
        spec=get_run_spec,
        path_points=get_path_points,
        results=get_results_dir_of_output,
    log:
        "logs/evaluate/{experiment}/{run}/{segment}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}/{run}/{segment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=get_gpu,
        nvidia_gpu=get_gpu,
    conda:
        ENV
    script:
        "../scripts/evaluate.py"
