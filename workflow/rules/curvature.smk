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
        curvature=table_part("curvature", "{experiment}", "{run}"),
        spectrum=table_part("spectrum", "{experiment}", "{run}"),
        block_curvature=table_part("block_curvature", "{experiment}", "{run}"),
        stationarity=table_part("stationarity", "{experiment}", "{run}"),
        flatness=table_part("flatness", "{experiment}", "{run}"),
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
        table_part("plateaus", "{experiment}"),
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
