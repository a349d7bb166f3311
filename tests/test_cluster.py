"""Cluster execution as Snakemake plans it (dry runs): which jobs ask for a GPU, which rules stay on
the submitting machine, how many scheduler submissions the shipped profiles make with and without
the cluster preset, and that every shipped profile holds only options this Snakemake and its plugins
know. tests/test_slurm.py and tests/test_kubernetes.py run the smoke study through the real plugins.
"""

import re
from collections import Counter

import duckdb
import pytest
import yaml
from conftest import ROOT, chain_rules, job_stats, local_rules, run_snakemake, torch_rules

from landscope.config import load_study

PROFILES = ROOT / "profiles"
LOCAL_RULES = local_rules()
TORCH_RULES = torch_rules()
STORAGE_KEYS = {"default-storage-provider", "default-storage-prefix"}  # a dry run would ask the bucket


def plan(tmp_path, configfile, *args) -> str:
    """`snakemake -n` on a config, the printed plan."""
    out = run_snakemake(tmp_path, configfile, "-n", *args, cores=None, timeout=300)
    return out.stdout + out.stderr


def resources_by_rule(text: str) -> dict[str, set[str]]:
    """rule -> the set of resource lines its planned jobs print (top-level jobs and group members)."""
    out: dict[str, set[str]] = {}
    for rule, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*$)", text, flags=re.MULTILINE | re.DOTALL):
        line = re.search(r"^\s*resources: (.*)$", body, flags=re.MULTILINE)
        out.setdefault(rule, set()).add(line.group(1) if line else "")
    return out


def submissions(text: str) -> tuple[int, Counter]:
    """(group jobs, ungrouped jobs by rule that are not localrules): what a cluster run submits."""
    groups = len(re.findall(r"\] Group job ", text))
    alone = Counter(r for r in re.findall(r"^rule (\w+):", text, flags=re.MULTILINE) if r not in LOCAL_RULES)
    return groups, alone


def test_the_localrules_are_the_rules_that_only_read_tables():
    """Every rule is local (reads tables, runs where Snakemake runs) or in a trajectory's chain (the cluster
    preset's group: they read the training folder's undeclared checkpoints, so they share a node or pod);
    every torch rule (may need a GPU) is in the chain; none is both local and in the chain."""
    rules = set()
    for path in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        rules |= set(re.findall(r"^rule (\w+):", path.read_text(), flags=re.MULTILINE))
    assert rules == LOCAL_RULES | set(chain_rules()) and TORCH_RULES <= set(chain_rules())
    assert not LOCAL_RULES & set(chain_rules())
    assert {"conditions", "report", "report_index", "database", "fetch_data", "report_site"} <= LOCAL_RULES
    assert {"train", "snapshot", "evaluate", "curvature", "surfaces"} <= TORCH_RULES


@pytest.mark.parametrize(("device", "gpu"), [("cpu", None), ("auto", None), ("cuda", 1)])
def test_gpu_resources_exist_only_when_the_device_is_cuda(device, gpu, tmp_path):
    """No `gpu` key at all for a CPU study (a gpu=0 key makes the Kubernetes plugin demand a GPU
    maker); gpu=1 and nvidia_gpu=1 (Google Batch's name) on the four torch rules for device: cuda."""
    (tmp_path / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    text = plan(tmp_path, tmp_path / "smoke.yaml", "--config", f"device={device}")
    resources = resources_by_rule(text)
    assert set(resources) == set(job_stats(text))
    for rule, lines in resources.items():
        for line in lines:
            keys = dict(kv.split("=", 1) for kv in line.split(", ") if "=" in kv)
            want = {"gpu": str(gpu), "nvidia_gpu": str(gpu)} if gpu and rule in TORCH_RULES else {}
            assert {k: v for k, v in keys.items() if "gpu" in k} == want, (rule, line)


def inputs_by_rule(text: str) -> dict[str, list[str]]:
    """rule -> the input lists of its planned jobs, as `snakemake -n` prints them."""
    out: dict[str, list[str]] = {}
    for rule, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*$)", text, flags=re.MULTILINE | re.DOTALL):
        line = re.search(r"^\s*input: (.*)$", body, flags=re.MULTILINE)
        out.setdefault(rule, []).append(line.group(1) if line else "")
    return out


def test_jobs_that_read_x_k_declare_its_sidecar(tmp_path):
    """Without a shared file system only declared files reach a job: every job that loads x_K (which
    checks it against its sidecar) declares minimizer.json of its own run, and so does the page of an
    analytic experiment (its path plot reads x_K), one per run; other pages do not read x_K."""
    inputs = inputs_by_rule(plan(tmp_path, ROOT / "config" / "config.yaml"))
    for rule in ("evaluate", "curvature", "surfaces"):
        assert inputs[rule], rule
        for line in inputs[rule]:
            folders = set(re.findall(r"(results/checkpoints/experiment=[^/]+/run=[^/,]+)/minimizer\.pt", line))
            assert len(folders) == 1 and f"{folders.pop()}/minimizer.json" in line, (rule, line)
    pages = {re.search(r"experiment=(\w+)", line).group(1): line for line in inputs["report"]}
    runs = {e.name: len(e.runs) for e in load_study(str(ROOT / "config" / "config.yaml")).experiments.values()}
    assert pages["example1"].count("/minimizer.json") == runs["example1"] > 1
    assert "/minimizer.json" not in pages["digits_mlp"]


@pytest.mark.parametrize("config", ["smoke", "config"])
def test_cluster_preset_submits_one_job_per_run_and_keeps_table_rules_local(config, tmp_path):
    """With profiles/slurm and the cluster preset: one submission per trajectory (training key), nothing
    else; without the preset: one per job of a rule that is not local. The rules that read tables are
    never submitted."""
    configfile = ROOT / "config" / f"{config}.yaml"
    slurm = ("--workflow-profile", str(PROFILES / "slurm"))
    grouped = plan(tmp_path, configfile, *slurm, "--profile", str(PROFILES / "cluster"))
    alone = plan(tmp_path, configfile, *slurm)
    stats = job_stats(alone)
    assert job_stats(grouped) == stats and stats["train"] >= 4
    assert submissions(grouped) == (stats["train"], Counter())
    assert submissions(alone) == (0, Counter({r: n for r, n in stats.items() if r not in LOCAL_RULES}))


@pytest.mark.parametrize("name", ["slurm", "kubernetes", "cluster"])
def test_shipped_profiles_hold_only_options_snakemake_and_the_plugins_know(name, tmp_path):
    """Each profile plans the smoke DAG (a dry run). Kubernetes without its storage keys (a dry run
    would ask the bucket for the outputs' times) and so without its executor, which needs them;
    the cluster preset together with profiles/slurm, as documented."""
    pytest.importorskip(f"snakemake_executor_plugin_{'slurm' if name == 'cluster' else name}",
                        reason="pip install -e '.[test]' (the executor plugins)")
    profile = PROFILES / name
    if name == "kubernetes":
        keys = yaml.safe_load((profile / "config.yaml").read_text())
        profile = tmp_path / "profile"
        profile.mkdir()
        (profile / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in keys.items()
                                                             if k not in STORAGE_KEYS | {"executor"}}))
    args = (("--workflow-profile", str(PROFILES / "slurm"), "--profile", str(profile)) if name == "cluster"
            else ("--workflow-profile", str(profile)))
    (tmp_path / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    assert job_stats(plan(tmp_path, tmp_path / "smoke.yaml", *args))["evaluate"] == 12


BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_sizing_query_of_the_docs_gives_runtime_and_mem_mb_per_rule(tmp_path, monkeypatch):
    """docs/cluster.md's query on benchmark files of known seconds and peaks: runtime = ceil(2 x the
    slowest job / 60 s), at least 1; mem_mb = 1.5 x the largest peak rounded up to 100 MB."""
    query = (ROOT / "docs" / "cluster.md").read_text().split("<!-- sizing-query -->", 1)[1]
    query = query.split("```sql", 1)[1].split("```", 1)[0]
    jobs = {"train/e/r1.tsv": (50.0, 400), "train/e/r2.tsv": (100.5, 1000), "evaluate/e/r/00000.tsv": (10.0, 333),
            "conditions/e.tsv": (0.2, 150)}
    for path, (s, rss) in jobs.items():
        f = tmp_path / "results" / "benchmarks" / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(BENCHMARK_HEADER + f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t0\t1\n")
    monkeypatch.chdir(tmp_path)
    rows = duckdb.sql(query).fetchall()
    assert rows == [("conditions", 1, 0.2, 150, 1, 300),  # 225 MB -> 300; 0.4 s -> at least 1 minute
                    ("evaluate", 1, 10.0, 333, 1, 500),  # 499.5 MB -> 500
                    ("train", 2, 100.5, 1000, 4, 1500)]  # 201 s -> 4 minutes; 1500 MB
