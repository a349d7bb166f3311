rule evaluate:
    """Replay one segment with the same batches; exact per-step quantities against x_K; drift check."""
    input:
        manifest=f"{CKPT}/manifest.json",
        minimizer=f"{CKPT}/minimizer.pt",
    output:
        steps="results/tables/steps/experiment={experiment}/run={run}/part-{segment}.parquet",
        directions="results/tables/directions/experiment={experiment}/run={run}/part-{segment}.parquet",
        drift="results/tables/drift/experiment={experiment}/run={run}/part-{segment}.parquet",
    params:
        spec=get_run_spec,
        results=get_results_dir_of_output,
    log:
        "logs/evaluate/{experiment}/{run}/{segment}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}/{run}/{segment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    conda:
        ENV
    script:
        "../scripts/evaluate.py"
