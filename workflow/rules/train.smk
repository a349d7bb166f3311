rule train:
    """Deterministic training of one trajectory, once per training key (the hash of what decides the
    trajectory: model, data, optimizer, schedule, batch size, steps, snapshot interval, seed, device;
    landscope.spec (RunSpec.training_key)), whichever experiments and sweep points share it: checkpoints
    every snapshot_every steps, resumable. A run of a `source: recorded` experiment is not trained:
    the job imports what your own loop recorded (landscope.trajectory.train.train_or_import)."""
    input:
        recording=get_recording,
        data=get_fetch_record,
    output:
        manifest=f"{TRAIN}/manifest.json",
    params:
        spec=get_key_spec,
    log:
        "logs/train/{key}.log",
    benchmark:
        "results/benchmarks/train/{key}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=get_gpu,
        nvidia_gpu=get_gpu,
    conda:
        ENV
    script:
        "../scripts/train.py"


rule snapshot:
    """Full-batch loss, gradient norm, parameter norm and accuracy at every checkpoint of one
    trajectory (landscope.trajectory.snapshot.snapshot_run), once per training key."""
    input:
        manifest=f"{TRAIN}/manifest.json",
    output:
        snapshots=f"{TRAIN}/snapshots.parquet",
    params:
        spec=get_key_spec,
    log:
        "logs/snapshot/{key}.log",
    benchmark:
        "results/benchmarks/snapshot/{key}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=get_gpu,
        nvidia_gpu=get_gpu,
    conda:
        ENV
    script:
        "../scripts/snapshot.py"


rule select_minimizer:
    """x_K of one run by its minimizer setting (last, best, tail_average, projection), and the run's
    train, runs and snapshots rows under its own experiment and run names
    (landscope.trajectory.train.finish_run). Changing a measurement-only setting (minimizer, f_i_star
    for most optimizers, directions_every, drift_tolerance) re-runs this job and what follows it,
    never the training."""
    input:
        manifest=get_manifest,
        snapshots=get_snapshots,
    output:
        minimizer=f"{CKPT}/minimizer.pt",
        minimizer_sidecar=f"{CKPT}/minimizer.json",
        train=table_part("train", "{experiment}", "{run}"),
        runs=table_part("runs", "{experiment}", "{run}"),
        snapshots=table_part("snapshots", "{experiment}", "{run}"),
        minimizers=table_part("minimizers", "{experiment}", "{run}"),
    params:
        spec=get_run_spec,
        results=get_results_dir_of_output,
    log:
        "logs/select_minimizer/{experiment}/{run}.log",
    benchmark:
        "results/benchmarks/select_minimizer/{experiment}/{run}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/select_minimizer.py"
