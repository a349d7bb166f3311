rule bounds:
    """What each classical condition's standard theorem promises with the measured constants (the run's step
    size, L from the measured sharpness, the gradient noise), beside what the run achieved, per run and
    point (condition_bounds, and along training condition_bound_curve)."""
    input:
        constants=table_part("condition_constants", "{experiment}"),
        runs=get_runs_parts,
        steps=get_steps_parts,
        directions=get_directions_parts,
        curvature=get_curvature_tables,
    output:
        bounds=table_part("condition_bounds", "{experiment}"),
        curve=table_part("condition_bound_curve", "{experiment}"),
    params:
        experiment=get_experiment_spec,
        results=get_results_dir_of_output,
    log:
        "logs/bounds/{experiment}.log",
    benchmark:
        "results/benchmarks/bounds/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/bounds.py"
