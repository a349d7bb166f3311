rule curvature:
    """Hessian curvature of every checkpoint of one run (top eigenvalues, lambda_min, SLQ spectral
    density, fractions of clearly negative and of near-zero eigenvalues, Hutchinson and Hutch++
    traces, sharpness against the optimizer's stability threshold, preconditioned for Adam), each
    parameter block's lambda_max and trace (table block_curvature), the stationarity of its
    checkpoints, and flatness at x_K (eps-sublevel radius, log-volume proxy, SGLD local learning
    coefficient), after train."""
    input:
        manifest=get_manifest,
        minimizer=f"{CKPT}/minimizer.pt",
        minimizer_sidecar=f"{CKPT}/minimizer.json",
    output:
        curvature="results/tables/curvature/experiment={experiment}/run={run}/part-00000.parquet",
        spectrum="results/tables/spectrum/experiment={experiment}/run={run}/part-00000.parquet",
        block_curvature="results/tables/block_curvature/experiment={experiment}/run={run}/part-00000.parquet",
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
        gpu=get_gpu,
        nvidia_gpu=get_gpu,
    conda:
        ENV
    script:
        "../scripts/curvature.py"


rule plateaus:
    """Plateau-escape events of every run of one experiment (loss flat with a small gradient, then
    a drop) from the replayed per-step table, after evaluate. Cheap: runs whether or not the
    experiment's Hessian curvature is enabled."""
    input:
        get_steps_parts,
    output:
        "results/tables/plateaus/experiment={experiment}/part-00000.parquet",
    params:
        runs=get_run_names,
        settings=get_plateau_settings,
        results=get_results_dir_of_output,
    log:
        "logs/plateaus/{experiment}.log",
    benchmark:
        "results/benchmarks/plateaus/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/plateaus.py"
