rule curvature:
    """Hessian curvature of every checkpoint of one run (top eigenvalues, lambda_min, SLQ spectral
    density and negative fraction, Hutchinson trace, sharpness against 2/lr), the stationarity of
    its checkpoints, and flatness at x_K (eps-sublevel radius, log-volume proxy, SGLD local
    learning coefficient), after train."""
    input:
        manifest=f"{CKPT}/manifest.json",
        minimizer=f"{CKPT}/minimizer.pt",
    output:
        curvature="results/tables/curvature/experiment={experiment}/run={run}/part-00000.parquet",
        spectrum="results/tables/spectrum/experiment={experiment}/run={run}/part-00000.parquet",
        stationarity="results/tables/stationarity/experiment={experiment}/run={run}/part-00000.parquet",
        flatness="results/tables/flatness/experiment={experiment}/run={run}/part-00000.parquet",
    params:
        spec=get_run_spec,
        settings=get_curvature_settings,
        results=get_results_dir_of_output,
    log:
        "logs/curvature/{experiment}/{run}.log",
    benchmark:
        "results/benchmarks/curvature/{experiment}/{run}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    conda:
        ENV
    script:
        "../scripts/curvature.py"
