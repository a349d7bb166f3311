rule conditions:
    """Exact alpha-beta region and constants (all seeds, each seed, a range of margins), min-T grid,
    PL / Aiming / angle estimates per sweep point; every classical condition's best constant (condition_constants)."""
    input:
        steps=get_steps_parts,
        directions=get_directions_parts,
        drift=get_drift_parts,
    output:
        summary="results/tables/condition_summary/experiment={experiment}/part-00000.parquet",
        region="results/tables/ab_region/experiment={experiment}/part-00000.parquet",
        frontier="results/tables/ab_frontier/experiment={experiment}/part-00000.parquet",
        grid="results/tables/ab_grid/experiment={experiment}/part-00000.parquet",
        pl="results/tables/pl/experiment={experiment}/part-00000.parquet",
        seeds="results/tables/seed_conditions/experiment={experiment}/part-00000.parquet",
        margins="results/tables/margin_sensitivity/experiment={experiment}/part-00000.parquet",
        constants="results/tables/condition_constants/experiment={experiment}/part-00000.parquet",
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
