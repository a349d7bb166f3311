rule surfaces:
    """Loss surfaces of one run around x_K, after train and evaluate: the loss along x_0 -> x_K and
    x_k -> x_K, on 2-D grids in a filter-normalised random plane and in the trajectory's PCA plane,
    and the iterates projected onto each plane. It replays nothing: the iterates between checkpoints
    come from the evaluate jobs of the run's segments (path_iterates)."""
    input:
        manifest=get_manifest,
        minimizer=f"{CKPT}/minimizer.pt",
        minimizer_sidecar=f"{CKPT}/minimizer.json",
        path_iterates=get_path_iterates,
    output:
        surface_1d=table_part("surface_1d", "{experiment}", "{run}"),
        surface_2d=table_part("surface_2d", "{experiment}", "{run}"),
        surface_path=table_part("surface_path", "{experiment}", "{run}"),
    params:
        spec=get_run_spec,
        settings=get_surfaces_settings,
        results=get_results_dir_of_output,
    log:
        "logs/surfaces/{experiment}/{run}.log",
    benchmark:
        "results/benchmarks/surfaces/{experiment}/{run}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=get_gpu,
        nvidia_gpu=get_gpu,
    conda:
        ENV
    script:
        "../scripts/surfaces.py"
