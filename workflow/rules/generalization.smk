# Which measures predict generalization: one study-wide job after every experiment's tables
# (landscope.measures.generalization, landscope.report.generalization).
localrules:
    generalization,


rule generalization:
    """Which measures at x_K rank the generalization gap across the study's runs (Kendall tau with a
    bootstrap interval, granulated tau within each experiment's sweep), as tables and a page."""
    input:
        get_generalization_inputs(),
    output:
        runs="results/tables/generalization_runs/study/part-00000.parquet",
        measures="results/tables/generalization_measures/study/part-00000.parquet",
        page="reports/generalization.html",
    params:
        experiments=list(STUDY.experiments),
        runs=get_study_runs(),
        results=get_results_dir_of_output,
    log:
        "logs/generalization.log",
    benchmark:
        "results/benchmarks/generalization/study.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/generalization.py"
