rule snapshot:
    """Full-batch loss, gradient norm, parameter norm and accuracy at every checkpoint."""
    input:
        manifest=f"{CKPT}/manifest.json",
    output:
        "results/tables/snapshots/experiment={experiment}/run={run}/part-00000.parquet",
    params:
        spec=get_run_spec,
        results=get_results_dir_of_output,
    log:
        "logs/snapshot/{experiment}/{run}.log",
    benchmark:
        "results/benchmarks/snapshot/{experiment}/{run}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/snapshot.py"


rule select_minimizer:
    """x_K, the stand-in for Proj(x_k, S): the last checkpoint (paper) or the best full loss."""
    input:
        manifest=f"{CKPT}/manifest.json",
        snapshots="results/tables/snapshots/experiment={experiment}/run={run}/part-00000.parquet",
    output:
        minimizer=f"{CKPT}/minimizer.pt",
        table="results/tables/minimizers/experiment={experiment}/run={run}/part-00000.parquet",
    params:
        spec=get_run_spec,
        results=get_results_dir_of_output,
    log:
        "logs/select_minimizer/{experiment}/{run}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/select_minimizer.py"


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
