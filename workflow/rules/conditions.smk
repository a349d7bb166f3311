rule conditions:
    """Exact alpha-beta region and constants (all seeds, each seed, a range of margins), min-T grid,
    PL / Aiming / angle estimates per sweep point; every classical condition's best constant (condition_constants)."""
    input:
        steps=get_steps_parts,
        directions=get_directions_parts,
        drift=get_drift_parts,
    output:
        summary=table_part("condition_summary", "{experiment}"),
        region=table_part("ab_region", "{experiment}"),
        frontier=table_part("ab_frontier", "{experiment}"),
        grid=table_part("ab_grid", "{experiment}"),
        pl=table_part("pl", "{experiment}"),
        seeds=table_part("seed_conditions", "{experiment}"),
        margins=table_part("margin_sensitivity", "{experiment}"),
        constants=table_part("condition_constants", "{experiment}"),
    params:
        experiment=get_experiment_spec,
        results=get_results_dir_of_output,
    log:
        "logs/conditions/{experiment}.log",
    benchmark:
        "results/benchmarks/conditions/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/conditions.py"
