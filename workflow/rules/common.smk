# Helpers shared by the rules: the validated study, and input functions with verb names.
import sys
from pathlib import Path
from types import SimpleNamespace

from landscope.config import load_study
from landscope.factories import ConfigError
from landscope.problem.catalog import source as data_source
from landscope.problem.sources import SOURCES as DATA_SOURCES
from landscope.problem.sources import availability_problem, fetch_home
from landscope.report.claims import sweep_sequences
from landscope.settings import surface_runs
from landscope.store import part_path

try:
    STUDY = load_study(config)
except ConfigError as err:
    sys.exit(f"landscope: {err}")

for _name, _why in STUDY.skipped.items():
    print(f"landscope: skipping experiment '{_name}': {_why}", file=sys.stderr)
for _name, _why in STUDY.deferred.items():
    print(f"landscope: experiment '{_name}' stays in the DAG but its train jobs will fail: {_why}", file=sys.stderr)

CKPT = "results/checkpoints/experiment={experiment}/run={run}"  # the run folder: x_K, path iterates
TRAIN = "results/checkpoints/train={key}"  # the training folder: checkpoints, manifest, snapshots

# Checkpoints live per training key (results/checkpoints/train=KEY/): a results folder of the earlier layout (a
# manifest per run folder) is refused rather than silently trained again beside the old checkpoints.
_legacy = sorted(Path("results/checkpoints").glob("experiment=*/run=*/manifest.json"))
if _legacy:
    sys.exit(f"landscope: {_legacy[0].parent} holds checkpoints in the layout of an earlier landscope (one folder "
             "per run); checkpoints are now shared per training key under results/checkpoints/train=KEY/. Keep "
             "the old results by running this study in a fresh folder (snakemake --directory NEW_FOLDER ...), "
             "or delete results/ (or move it away) to train again here.")

# One train job per trajectory: runs whose training key is equal share it (spec.RunSpec.training_key).
RUNS_OF_KEY = {}
for _r in STUDY.runs():
    RUNS_OF_KEY.setdefault(_r.training_key(), []).append(_r)

for _r in STUDY.runs():
    if _r.source == "recorded" and not Path(TRAIN.format(key=_r.training_key()), "recording.json").is_file():
        print(f"landscope: run {_r.experiment}/{_r.run} has source: recorded but no recording yet: run your "
              "training loop with landscope.Recorder first (README: 'Your own training loop')", file=sys.stderr)



def table_part(table, experiment, run=None, part=0):
    """A table's part file as its job writes it (landscope.store.part_path: the one home of that layout)."""
    return str(part_path("results", table, experiment, run, part))


ENV = "../../envs/landscope.yaml"


wildcard_constraints:
    experiment=r"(?!index\.html$)[a-z][a-z0-9_-]*",
    run=r"[A-Za-z0-9.+_-]+",
    segment=r"\d{5}",
    key=r"[0-9a-f]{16}",


def get_run_spec(wildcards):
    return STUDY.run(wildcards.experiment, wildcards.run).to_dict()


def spec_of(wildcards):
    """The RunSpec of a job: its run's, or for a job of a training key the first run that shares it."""
    if hasattr(wildcards, "key"):
        return RUNS_OF_KEY[wildcards.key][0]
    return STUDY.run(wildcards.experiment, wildcards.run)


def get_key_spec(wildcards):
    """What a train or snapshot job gets: the training fields only (RunSpec.for_training), so that a
    measurement-only change of any run sharing the key does not re-run it."""
    return spec_of(wildcards).for_training().to_dict()


def get_train_dir(wildcards):
    """The training folder of the job's run."""
    return TRAIN.format(key=spec_of(wildcards).training_key())


def get_manifest(wildcards):
    return f"{get_train_dir(wildcards)}/manifest.json"


def get_snapshots(wildcards):
    return f"{get_train_dir(wildcards)}/snapshots.parquet"


def get_recording(wildcards):
    """A recorded run's train job needs what landscope.Recorder wrote; a trained run needs nothing."""
    if spec_of(wildcards).source != "recorded":
        return []
    return [f"{get_train_dir(wildcards)}/recording.json"]


def get_experiment_runs(experiment):
    return STUDY.experiments[experiment].runs


def get_segment_parts(wildcards, table):
    return [
        table_part(table, r.experiment, r.run, j)
        for r in get_experiment_runs(wildcards.experiment)
        for j in range(r.n_segments)
    ]


def get_steps_parts(wildcards):
    return get_segment_parts(wildcards, "steps")


def get_directions_parts(wildcards):
    return get_segment_parts(wildcards, "directions")


def get_drift_parts(wildcards):
    return get_segment_parts(wildcards, "drift")


def get_run_parts(wildcards, table):
    return [
        table_part(table, r.experiment, r.run)
        for r in get_experiment_runs(wildcards.experiment)
    ]


def get_report_inputs(wildcards):
    tables = ("ab_region", "ab_frontier", "ab_grid", "pl", "condition_summary", "seed_conditions",
              "margin_sensitivity", *CONDITION_TABLES)
    out = [table_part(t, wildcards.experiment) for t in tables]
    for t in ("runs", "train", "snapshots", "minimizers"):
        out += get_run_parts(wildcards, t)
    out += get_curvature_parts(wildcards)
    out += get_surfaces_parts(wildcards)
    out += get_diffusion_parts(wildcards)
    if is_analytic(wildcards.experiment):  # the surface plot reads checkpoints and x_K
        for r in get_experiment_runs(wildcards.experiment):
            out += [TRAIN.format(key=r.training_key()) + "/manifest.json",
                    CKPT.format(experiment=r.experiment, run=r.run) + "/minimizer.pt"]
    return out


def get_conditions_settings(wildcards):
    return STUDY.experiments[wildcards.experiment].conditions


def get_run_names(wildcards):
    return [r.run for r in get_experiment_runs(wildcards.experiment)]


def get_experiment_title(wildcards):
    return STUDY.experiments[wildcards.experiment].title


def get_all_reports():
    return [f"reports/{e}.html" for e in STUDY.experiments]


def get_all_summaries():
    """Every experiment's condition_summary and classical-condition parts (the index and the database read them)."""
    return [table_part(t, e)
            for e in STUDY.experiments for t in ("condition_summary", *CONDITION_TABLES)]


def get_experiment_spec(wildcards):
    return STUDY.experiments[wildcards.experiment].to_dict()


def get_skipped():
    return dict(STUDY.skipped)


def _results_dir(path):
    parts = Path(path).parts
    return str(Path(*parts[: parts.index("results") + 1]))


def get_results_dir_of_output(wildcards, output):
    return _results_dir(output[0])


def get_results_dir_of_input(wildcards, input):
    return _results_dir(input[0])


# ----------------------------------------------------------------------------------- report pages
def is_analytic(experiment):
    return any(r.model.get("name") == "analytic" for r in get_experiment_runs(experiment))


def get_experiment_figure(wildcards):
    return STUDY.experiments[wildcards.experiment].raw.get("figure")


def get_experiment_scale_note(wildcards):
    return STUDY.experiments[wildcards.experiment].raw.get("scale_note")


def get_measurement_setup(wildcards):
    """The config's measurement choices for the page's semantics box (distinct, in run order)."""
    runs = get_experiment_runs(wildcards.experiment)
    return {"models": _distinct(r.model["name"] for r in runs),
            "minimizers": _distinct(r.minimizer for r in runs),
            "f_i_star": _distinct(r.f_i_star for r in runs)}


def _distinct(values):
    return list(dict.fromkeys(values))


def get_table2_sequences():
    return [s for e in STUDY.experiments.values() for s in sweep_sequences(e)]


def get_table2_summaries():
    names = dict.fromkeys(s["experiment"] for s in get_table2_sequences())
    return [table_part(t, e)
            for e in names for t in ("condition_summary", "seed_conditions")]  # seed_conditions: beta's seed spread


def get_table2_results(wildcards, input):
    return _results_dir(input[0]) if len(input) else "results"


# ----------------------------------------------------------------------------------- curvature
def get_curvature_settings(wildcards):
    """The experiment's validated, default-filled ``curvature:`` section, less the plateau_* keys
    (changing those re-runs only the cheap plateaus rule)."""
    raw = STUDY.experiments[wildcards.experiment].raw["curvature"]
    return {k: v for k, v in raw.items() if not k.startswith("plateau_")}


def get_plateau_settings(wildcards):
    """The ``plateau_*`` keys of the experiment's ``curvature:`` section."""
    raw = STUDY.experiments[wildcards.experiment].raw["curvature"]
    return {k: v for k, v in raw.items() if k.startswith("plateau_")}


def curvature_enabled(experiment):
    """Whether the experiment measures Hessian curvature (its curvature jobs and tables exist)."""
    return STUDY.experiments[experiment].raw["curvature"]["enabled"]


def get_all_curvature_parts():
    """The curvature part of every run of every experiment whose curvature is enabled, and the
    plateaus part of every experiment."""
    return [table_part("curvature", r.experiment, r.run)
            for e in STUDY.experiments.values() if curvature_enabled(e.name) for r in e.runs] + [
        table_part("plateaus", e) for e in STUDY.experiments]


def get_curvature_parts(wildcards):
    """The experiment's curvature parts (none when curvature is disabled) and its plateaus part
    (always: plateaus come from the replay), for rules that read the tables."""
    plateaus = [table_part("plateaus", wildcards.experiment)]
    if not curvature_enabled(wildcards.experiment):
        return plateaus
    return [part for table in ("curvature", "spectrum", "block_curvature", "stationarity", "flatness")
            for part in get_run_parts(wildcards, table)] + plateaus  # every table the curvature job writes


# ----------------------------------------------------------------------------------- surfaces
def get_surfaces_settings(wildcards):
    """The experiment's validated, default-filled ``surfaces:`` section."""
    return STUDY.experiments[wildcards.experiment].raw["surfaces"]


def _surface_parts(experiment, table):
    return [table_part(table, r.experiment, r.run)
            for r in surface_runs(STUDY.experiments[experiment])]


def get_all_surfaces_parts():
    """The surface_2d part of every run that gets surfaces (enabled; all seeds or the first)."""
    return [p for e in STUDY.experiments for p in _surface_parts(e, "surface_2d")]


def get_surfaces_parts(wildcards):
    """The experiment's surface parts (none when disabled), for rules that read the tables."""
    return [p for t in ("surface_1d", "surface_2d", "surface_path")
            for p in _surface_parts(wildcards.experiment, t)]


def gets_surfaces(experiment, run):
    return any(r.run == run for r in surface_runs(STUDY.experiments[experiment]))


def get_path_points(wildcards):
    """The run's surfaces.path_points (0 when the run gets no surfaces): which iterates the evaluate
    jobs keep for the surfaces job. Only this setting reaches evaluate, so only it re-runs evaluate."""
    if not gets_surfaces(wildcards.experiment, wildcards.run):
        return 0
    return STUDY.experiments[wildcards.experiment].raw["surfaces"]["path_points"]


def get_path_iterates(wildcards):
    """The iterates the evaluate jobs of the run's segments kept (one file per segment, with sidecar)."""
    run = STUDY.run(wildcards.experiment, wildcards.run)
    ckpt = CKPT.format(experiment=run.experiment, run=run.run)
    return [f"{ckpt}/path-segment={j:05d}.{ext}" for j in range(run.n_segments) for ext in ("pt", "json")]


# ----------------------------------------------------------------------------------- condition bounds
CONDITION_TABLES = ("condition_constants", "condition_bounds", "condition_bound_curve")  # what the pages read


def get_runs_parts(wildcards):
    """The runs part of every run of the experiment (batch size against n_train: full-batch GD has no noise)."""
    return get_run_parts(wildcards, "runs")


def get_curvature_tables(wildcards):
    """The experiment's curvature parts, one per run ([] when curvature is disabled: L is then unknown)."""
    if not curvature_enabled(wildcards.experiment):
        return []
    return get_run_parts(wildcards, "curvature")


# ----------------------------------------------------------------------------------- diffusion
def diffusion_enabled(experiment):
    """Whether the experiment measures diffusion along the minimum (its diffusion jobs and tables exist)."""
    return STUDY.experiments[experiment].raw["diffusion"]["enabled"]


def get_diffusion_settings(wildcards):
    """The experiment's validated, default-filled ``diffusion:`` section."""
    return STUDY.experiments[wildcards.experiment].raw["diffusion"]


def get_run_snapshots_part(wildcards):
    return table_part("snapshots", wildcards.experiment, wildcards.run)


def get_run_curvature_part(wildcards):
    """The run's curvature part when the experiment measures curvature (lambda_max, trace), else nothing."""
    if not curvature_enabled(wildcards.experiment):
        return []
    return table_part("curvature", wildcards.experiment, wildcards.run)


def get_diffusion_parts(wildcards):
    """The experiment's diffusion and diffusion_msd parts (none when diffusion is disabled), for the page."""
    if not diffusion_enabled(wildcards.experiment):
        return []
    return [p for t in ("diffusion", "diffusion_msd") for p in get_run_parts(wildcards, t)]


def get_all_diffusion_parts():
    """The diffusion part of every run of every experiment whose diffusion is enabled."""
    return [table_part("diffusion", r.experiment, r.run)
            for e in STUDY.experiments.values() if diffusion_enabled(e.name) for r in e.runs]


# ----------------------------------------------------------------------------------- generalization
def get_generalization_inputs():
    """What the study-wide generalization job reads of every experiment: runs, snapshots and minimizers per
    run, directions per segment, the condition tables, the curvature job's tables where curvature is
    enabled, and the surface parts, which its DuckDB views also open: it starts only once nothing it
    reads is still being written."""
    out = get_all_summaries()
    for experiment in STUDY.experiments:
        wildcards = SimpleNamespace(experiment=experiment)
        out += [table_part("seed_conditions", experiment)]
        out += [p for t in ("runs", "snapshots", "minimizers") for p in get_run_parts(wildcards, t)]
        out += get_directions_parts(wildcards) + get_curvature_parts(wildcards) + get_surfaces_parts(wildcards)
    return out


def get_study_runs():
    """{experiment: its run names}: runs an earlier configuration left in the tables are ignored."""
    return {e: [r.run for r in spec.runs] for e, spec in STUDY.experiments.items()}


# --- cluster: resources the executor plugins read, files declared for storage (docs/cluster.md)
def get_gpu(wildcards):
    """1 when the run computes on CUDA (config key ``device: cuda``), else None. None leaves the key out
    of the job's resources; a 0 would stay in them (Snakemake 9 keeps ``gpu: 0``), and the Kubernetes
    plugin takes any ``gpu`` key for a GPU request. Rules give it as ``gpu`` (SLURM, Kubernetes) and as
    ``nvidia_gpu`` (Google Batch)."""
    return 1 if spec_of(wildcards).device == "cuda" else None


def get_report_sidecars(wildcards):
    """x_K's sidecars, which an analytic experiment's page reads with x_K (get_report_inputs) to check it:
    declared, so that they reach the page without a shared file system."""
    if not is_analytic(wildcards.experiment):
        return []
    return [CKPT.format(experiment=r.experiment, run=r.run) + "/minimizer.json"
            for r in get_experiment_runs(wildcards.experiment)]


def get_report_folder():
    """report_site's folder (the pages for `snakemake --report`), a target of rule all, except when files
    travel through a storage provider (profiles/kubernetes): a directory output through
    snakemake-storage-plugin-s3 0.3.6 is reported missing after its upload (docs/cluster.md)."""
    return [] if workflow.storage_settings.default_storage_provider else ["results/report/study"]


# --- data fetching
# Experiments with `if_data_missing: fetch` whose built-in dataset landscope can download: their train
# jobs wait for the dataset's fetch_data record (workflow/rules/data.smk).


def get_fetched_dataset(experiment):
    """The dataset the experiment's train jobs have fetched first, or None (another if_data_missing, or a
    dataset that cannot be downloaded)."""
    raw = STUDY.experiments[experiment].raw
    name = raw["dataset"]["name"]
    if raw["if_data_missing"] != "fetch" or name not in DATA_SOURCES or not DATA_SOURCES[name].downloads:
        return None
    return name


def get_fetch_record(wildcards):
    """The fetch_data record the run's train job waits for. It is an input whether or not the data is here
    at planning time, so that the set of inputs stays the same once the data has arrived (a changed set
    would re-run every train job), and ancient, so that its time re-runs nothing."""
    names = {get_fetched_dataset(r.experiment) for r in RUNS_OF_KEY[wildcards.key]} - {None}
    return [ancient(f"resources/data/{name}.json") for name in sorted(names)]


def fetch_data_dir(dataset):
    """The data directory the dataset's experiments read (the dataset's own data_dir, else the study's):
    the fetch puts the data there (or, when none is set, in $LANDSCOPE_DATA or the user cache)."""
    for name in STUDY.experiments:
        if get_fetched_dataset(name) == dataset:
            run = STUDY.experiments[name].runs[0]
            return run.dataset.get("data_dir") or run.data_dir
    raise ValueError(f"no experiment fetches dataset {dataset!r}")


def get_fetch_data_dir(wildcards):
    return fetch_data_dir(wildcards.dataset)


for _dataset in sorted({d for d in map(get_fetched_dataset, STUDY.experiments) if d}):
    if availability_problem({"name": _dataset}, fetch_data_dir(_dataset)):
        _row = data_source(_dataset)
        _what = f"{_row.size / 1e6:.1f} MB from {_row.url}" if _row else "with `landscope data fetch`"
        print(f"landscope: dataset {_dataset} is not here: its fetch_data job gets it ({_what}, verified) "
              f"into {fetch_home(fetch_data_dir(_dataset))}", file=sys.stderr)
