# landscope: train -> snapshot -> select_minimizer -> evaluate -> conditions -> report -> report_index
# (train and snapshot once per training key; the rest once per run, experiment or study)
# Table of contents only; the rules live in workflow/rules/, the logic in src/landscope/.

# The default study, unless --configfile names another (which then replaces it whole instead of
# being merged into it key by key); --config key=value still overrides single keys.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# After a run, "snakemake --report report.zip" packs these pages with captions, under this description.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/conditions.smk"
include: "workflow/rules/bounds.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/curvature.smk"
include: "workflow/rules/surfaces.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/generalization.smk"


# On a cluster these rules run where Snakemake runs, not as scheduler jobs: they only read tables
# (seconds and a few hundred MB each at the default scale; docs/cluster.md). Locally nothing changes.
localrules:
    conditions,
    plateaus,
    bounds,
    report,
    report_index,
    table2,
    database,


# Every page is a target of its own: Snakemake does not rebuild a missing intermediate file whose
# consumers are up to date, so a page lost to a killed report job would otherwise stay missing.
rule all:
    input:
        "reports/index.html",
        "reports/table2.html",
        "reports/generalization.html",
        get_all_reports(),
        get_report_folder(),
        "results/landscope.duckdb",
        get_all_curvature_parts(),
        get_all_surfaces_parts(),
        get_all_diffusion_parts(),
    default_target: True
