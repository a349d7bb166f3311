"""The smoke study through the real Kubernetes executor plugin (snakemake-executor-plugin-kubernetes)
and the shipped profiles/kubernetes, with only the Kubernetes API replaced. This file, run as a script,
starts Snakemake with a fake API client in place of the kubernetes package's: every Job body the
plugin creates is kept (the pod spec as the API server would receive it) and, unless told not to,
run as the pod would run it: its container's command in a fresh empty folder (the pod's emptyDir
/workdir), with the run's secret as environment variables. Files travel only through the storage
provider the profile names, S3, served here by a local moto server, as pods share no file system.
"""

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import yaml
from conftest import ROOT, chain_rules, run_pipeline

from landscope.config import load_study

SPOOL_ENV = "K8S_STUB_SPOOL"
NO_RUN_ENV = "K8S_STUB_NO_RUN"  # set: keep each Job body and report the Job failed, without running it


# ------------------------------------------------------------------------------------- the fake API
# A pod starts with `pip install --target .snakemake/pip-deployments <the storage plugins>` (Snakemake
# deploys them, so a real cluster's pods need PyPI). Here the image is this environment, which has
# them: the pod's pip checks that each one is installed instead of downloading it.
PIP_IN_IMAGE = """#!/bin/sh
[ "$1" = install ] && [ "$2" = --target ] || {{ echo "pip in the test image: only 'install --target'"; exit 2; }}
shift 3
exec "{python}" -c 'import sys, importlib.metadata as m; [m.version(p) for p in sys.argv[1:]]' "$@"
"""

class FakeCluster:
    """What the plugin asks of the API server: secrets, Jobs and their pods, in one process."""

    def __init__(self, spool: Path, run: bool):
        self.spool, self.run, self.secrets, self.procs = spool, run, {}, {}
        self.lock = threading.Lock()
        self.image = spool / "image-bin"  # what the container image adds to the pod's PATH
        self.image.mkdir(exist_ok=True)
        (self.image / "pip").write_text(PIP_IN_IMAGE.format(python=sys.executable))
        (self.image / "pip").chmod(0o755)

    def create_namespaced_secret(self, namespace, body):
        self.secrets[body.metadata.name] = dict(body.data)

    def delete_namespaced_secret(self, name, namespace, body=None):
        self.secrets.pop(name, None)

    def create_namespaced_job(self, namespace, body):
        import kubernetes.client  # here: the module imports without the plugin installed (the tests skip)

        spec = kubernetes.client.ApiClient().sanitize_for_serialization(body)
        with self.lock, open(self.spool / "jobs.jsonl", "a") as f:
            f.write(json.dumps(spec) + "\n")
        name = body.metadata.name
        if not self.run:
            self.procs[name] = None
            return body
        container = body.spec.template.spec.containers[0]
        env = {**os.environ, "PATH": f"{self.image}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
        for var in container.env or []:
            ref = var.value_from.secret_key_ref
            env[var.name] = base64.b64decode(self.secrets[ref.name][ref.key]).decode()
        workdir = self.spool / "pods" / name  # the pod's emptyDir, mounted at /workdir
        workdir.mkdir(parents=True)
        with open(self.spool / "pods" / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen([*container.command, *container.args], cwd=workdir, env=env,
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return body

    def read_namespaced_job_status(self, name, namespace):
        proc = self.procs[name]
        rc = 1 if proc is None else proc.poll()
        status = SimpleNamespace(failed=1 if rc not in (None, 0) else None, succeeded=1 if rc == 0 else None)
        return SimpleNamespace(status=status)

    def list_namespaced_pod(self, namespace, label_selector=None):
        return SimpleNamespace(items=[])  # no container statuses: the plugin goes by the Job's status

    def delete_namespaced_job(self, name, namespace, **kwargs):
        pass

    def delete_namespaced_pod(self, name, namespace, **kwargs):
        pass


def stub_main(argv: list[str]) -> int:
    """Snakemake's command line, with the Kubernetes client and its configuration replaced."""
    import kubernetes.client  # here: the module imports without the plugin installed (the tests skip)
    import kubernetes.config

    cluster = FakeCluster(Path(os.environ[SPOOL_ENV]), run=not os.environ.get(NO_RUN_ENV))
    kubernetes.config.load_kube_config = lambda *args, **kwargs: None
    kubernetes.client.CoreV1Api = kubernetes.client.BatchV1Api = lambda *args, **kwargs: cluster
    from snakemake.cli import main  # after the fake is in place

    sys.argv = ["snakemake", *argv]
    return main()


if __name__ == "__main__":
    sys.exit(stub_main(sys.argv[1:]))


# ------------------------------------------------------------------------------------- the tests
PROFILE = ROOT / "profiles" / "kubernetes"
BUCKET, PREFIX = "landscope-test", "study"
SMOKE_RUNS = 4  # halfspace seed-0/1, digits_mlp width-8/32
SMOKE_CHAIN = set(chain_rules()) - {"diffusion"}  # the chain's rules that the smoke study runs
STEPS_COLUMNS = ["step", "lr", "batch_loss", "batch_loss_at_min", "grad_dot_dir", "grad_norm", "dist_to_min"]


@pytest.fixture(scope="module")
def s3():
    """A local S3 service (moto) on the loopback interface, with an empty bucket; boto3 client."""
    pytest.importorskip("snakemake_executor_plugin_kubernetes", reason="pip install -e '.[test]' (Kubernetes plugin)")
    pytest.importorskip("snakemake_storage_plugin_s3", reason="pip install -e '.[test]' (S3 storage plugin)")
    moto_server = pytest.importorskip("moto.server", reason="pip install -e '.[test]' (moto, a local S3)")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    yield url, client
    server.stop()


def run_kubernetes(work: Path, s3, *args: str, run: bool = True) -> subprocess.CompletedProcess:
    """The smoke study from `work` (a copy of the workflow, as a user runs it from the repository)
    through profiles/kubernetes, the bucket and prefix replaced by the local service's."""
    url, client = s3
    bucket = f"{BUCKET}-{work.name.replace('_', '-').lower()}"[:60]
    client.create_bucket(Bucket=bucket)
    for name in ("Snakefile", "workflow", "envs"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    (work / "smoke.yaml").write_text((ROOT / "config" / "smoke.yaml").read_text())
    (work / "spool").mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", SPOOL_ENV: str(work / "spool"),
           "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL": url, "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": "test",
           "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "test", **({} if run else {NO_RUN_ENV: "1"})}
    cmd = [sys.executable, __file__, "--configfile", "smoke.yaml", "--workflow-profile", str(PROFILE),
           "--default-storage-prefix", f"s3://{bucket}/{PREFIX}", *args]
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800, check=False)
    out.bucket = bucket
    return out


def job_bodies(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "spool" / "jobs.jsonl").read_text().splitlines()]


def container(body: dict) -> dict:
    (c,) = body["spec"]["template"]["spec"]["containers"]
    return c


def target_rules(body: dict) -> set[str]:
    """The rules of the jobs a pod runs (from --target-jobs 'rule:wildcards' ...)."""
    cmd = container(body)["args"][1]
    jobs = cmd.split("--target-jobs ", 1)[1].split(" --", 1)[0]
    return {j.strip("'").split(":")[0] for j in jobs.split()}


@pytest.mark.parametrize(("device", "gpu"), [("cpu", None), ("cuda", "1")])
def test_kubernetes_pod_specs_ask_for_a_gpu_only_when_the_device_is_cuda(device, gpu, s3, tmp_path):
    """The first pods of the smoke DAG, one per run (the fake API keeps them and reports them failed)."""
    out = run_kubernetes(tmp_path, s3, "--config", f"device={device}", "--retries", "0", run=False)
    bodies = job_bodies(tmp_path)
    assert out.returncode != 0 and len(bodies) == SMOKE_RUNS, out.stderr[-3000:]
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for body in bodies:
        c, pod = container(body), body["spec"]["template"]["spec"]
        assert c["image"] == profile["container-image"] and c["command"] == ["/bin/sh"]
        cmd = c["args"][1]
        assert target_rules(body) == SMOKE_CHAIN  # the run's chain, one pod
        assert f"--default-storage-prefix 's3://{out.bucket}/{PREFIX}'" in cmd and "--mode 'remote'" in cmd
        assert cmd.startswith("pip install --target '.snakemake/pip-deployments' snakemake-storage-plugin-s3 && ")
        # one CPU (x the plugin's 0.95) and the largest job's memory: the jobs run one after another
        assert c["resources"]["requests"]["cpu"] == "950m" and c["resources"]["requests"]["memory"] == "2000M"
        assert c["resources"]["requests"].get("nvidia.com/gpu") == gpu and "limits" not in c["resources"]
        tolerations = [t["key"] for t in pod.get("tolerations") or []]
        assert tolerations == ([] if gpu is None else ["nvidia.com/gpu"])
        assert pod["volumes"] == [{"name": "workdir", "emptyDir": {}}] and c["workingDir"] == "/workdir"
        secret_env = {e["name"] for e in c["env"]}
        assert {"SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "SNAKEMAKE_STORAGE_S3_SECRET_KEY"} <= secret_env


@pytest.mark.slow
def test_kubernetes_profile_runs_the_smoke_study_one_pod_per_run(s3, tmp_path):
    """Every job of the smoke DAG: the runs' chains in pods (run here by the fake API), the rules
    that read tables on this machine; everything through the bucket.

    Not run one pod per job: the replay, curvature and surfaces jobs read the run's checkpoints,
    whose number depends on the run. A rule cannot declare a per-run number of files (outputs are
    not functions of the wildcards) except as one directory() output, and a directory output through
    snakemake-storage-plugin-s3 0.3.6 is never seen: its pre-job existence check caches "not a
    folder", and after the upload Snakemake reports the folder "missing in storage" (tried here: every
    pod's job then fails, grouped or not). docs/cluster.md says so."""
    out = run_kubernetes(tmp_path, s3)
    assert out.returncode == 0, out.stderr[-6000:]
    bodies = job_bodies(tmp_path)
    assert len(bodies) == SMOKE_RUNS and all(target_rules(b) == SMOKE_CHAIN
                                             for b in bodies)
    text = out.stdout + out.stderr
    for rule in ("conditions", "plateaus", "bounds", "report", "report_index", "table2", "database"):
        assert f"localrule {rule}:" in text, rule
    _, client = s3
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=out.bucket)
            for o in page.get("Contents", [])}
    for page in ("index.html", "table2.html", "halfspace.html", "digits_mlp.html"):
        assert f"{PREFIX}/reports/{page}" in keys
    steps = sorted(k for k in keys if k.startswith(f"{PREFIX}/results/tables/steps/experiment=halfspace/run=seed-0/"))
    download = tmp_path / "download"
    for i, key in enumerate(steps):
        download.mkdir(exist_ok=True)
        client.download_file(out.bucket, key, str(download / f"part-{i:05d}.parquet"))
    spec = next(r for r in load_study(str(tmp_path / "smoke.yaml")).experiments["halfspace"].runs if r.run == "seed-0")
    local, _, _ = run_pipeline(spec, tmp_path / "local")
    mine = pl.read_parquet(f"{local}/tables/steps/experiment=halfspace/run=seed-0/*.parquet")
    theirs = pl.read_parquet(f"{download}/*.parquet")
    assert len(steps) == spec.n_segments and len(theirs) == spec.steps
    assert mine.sort("step").select(STEPS_COLUMNS).equals(theirs.sort("step").select(STEPS_COLUMNS))  # bit for bit
