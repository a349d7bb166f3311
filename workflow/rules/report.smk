rule report:
    """One self-contained HTML page per experiment (JavaScript inlined; opens offline)."""
    input:
        get_report_inputs,
        sidecars=get_report_sidecars,
    output:
        "reports/{experiment}.html",  # in `snakemake --report` through report_site, where its links work
    wildcard_constraints:
        experiment=r"(?!(?:index|table2|generalization)\.html$)[a-z][a-z0-9_-]*",
    params:
        title=get_experiment_title,
        runs=get_run_names,
        figure=get_experiment_figure,
        scale_note=get_experiment_scale_note,
        setup=get_measurement_setup,
        results=get_results_dir_of_input,
    log:
        "logs/report/{experiment}.log",
    benchmark:
        "results/benchmarks/report/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/report.py"


rule report_index:
    """reports/index.html: every experiment with its verdict, linked."""
    input:
        summaries=get_all_summaries(),
        reports=get_all_reports(),
        table2="reports/table2.html",
        generalization="reports/generalization.html",
    output:
        "reports/index.html",  # in `snakemake --report` through report_site, where its links work
    params:
        experiments=list(STUDY.experiments),
        skipped=get_skipped(),
        results=get_results_dir_of_input,
    log:
        "logs/report_index.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/report_index.py"


localrules:
    report_site,


rule report_site:
    """The index, Table 2 and the experiment pages side by side in one folder, the study's one entry in
    `snakemake --report report.zip`. The zip keeps each report() file in a folder of its own
    (data/raw/<id>/), where the pages' links to one another would lead nowhere; a folder marked with
    htmlindex travels whole and opens at its index. A copy of the pages (about 1.5 MB each), made where
    Snakemake runs; reports/ stays the folder to open."""
    input:
        index="reports/index.html",
        table2="reports/table2.html",
        generalization="reports/generalization.html",
        pages=get_all_reports(),
    output:
        report(directory("results/report/study"), htmlindex="index.html", caption="../report/index.rst",
               category="Overview", labels={"page": "index"}),
    log:
        "logs/report_site.log",
    conda:
        ENV
    shell:
        "(mkdir -p {output} && cp {input} {output}/) 2> {log}"


rule table2:
    """reports/table2.html: constants and non-vanishing term along width, channels, depth, batch
    size, optimizer and model sweeps, with the measured direction beside the paper's claim."""
    input:
        get_table2_summaries(),
    output:
        "reports/table2.html",  # in `snakemake --report` through report_site, where its links work
    params:
        sequences=get_table2_sequences(),
        results=get_table2_results,
    log:
        "logs/table2.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/table2.py"


rule database:
    """results/landscope.duckdb: the same typed views as `landscope sql`, for any DuckDB client."""
    input:
        get_all_summaries(),
    output:
        "results/landscope.duckdb",
    params:
        results=get_results_dir_of_output,
    log:
        "logs/database.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/database.py"
