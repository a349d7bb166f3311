# Datasets fetched as part of the DAG (experiments with `if_data_missing: fetch`).
localrules:
    fetch_data,


rule fetch_data:
    """Make one built-in dataset available where the loaders look: found as it is, or downloaded from the
    registry's URL (else its mirrors), verified against the published checksums, unpacked and moved into
    place atomically, under a lock (landscope.problem.sources.fetch_dataset, landscope.problem.fetch). The
    record says where it is and from where it came; the train jobs of the experiments that read the
    dataset wait for it. A local rule: on a cluster it runs once, on the machine that runs Snakemake."""
    output:
        record="resources/data/{dataset}.json",
    params:
        data_dir=get_fetch_data_dir,
    log:
        "logs/fetch_data/{dataset}.log",
    conda:
        ENV
    script:
        "../scripts/fetch_data.py"
