# Diffusion along the minimum (landscope.measures.diffusion), for experiments with diffusion.enabled.


rule diffusion:
    """Mean squared displacement of one run's checkpoints after its loss plateau, its exponent, and the
    drift of loss, gradient norm, parameter norm, test loss and (with curvature) lambda_max, trace and
    log-volume proxy over the same window, with the verdicts on the essay's claims, after select_minimizer
    (and curvature when enabled). Reads checkpoints into a model built on the CPU whatever the run's
    device, so the job asks for no GPU; no replay."""
    input:
        manifest=get_manifest,
        snapshots=get_run_snapshots_part,
        curvature=get_run_curvature_part,
    output:
        diffusion=table_part("diffusion", "{experiment}", "{run}"),
        msd=table_part("diffusion_msd", "{experiment}", "{run}"),
    params:
        spec=get_run_spec,
        settings=get_diffusion_settings,
        results=get_results_dir_of_output,
    log:
        "logs/diffusion/{experiment}/{run}.log",
    benchmark:
        "results/benchmarks/diffusion/{experiment}/{run}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/diffusion.py"
