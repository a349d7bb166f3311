"""The smoke DAG through the real Google Batch executor plugin (snakemake-executor-plugin-googlebatch) and
the shipped profiles/googlebatch, with only Google Cloud replaced. This file, run as a script, starts
Snakemake with a fake Batch client in place of google.cloud.batch_v1's: every job the plugin creates is
kept (the Job message as the Batch API would receive it) and reported failed, so Snakemake stops after
the first submissions, one per training run. No job runs: a Batch job is a VM running a container, which
the test cannot stand in for. Storage goes to a local S3 service (tests/test_kubernetes.py's fixture) in
place of the profile's Cloud Storage bucket, as the GCS storage plugin would need Google Cloud too.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, chain_rules
from test_kubernetes import s3  # noqa: F401 (the local S3 service fixture)

SPOOL_ENV = "GOOGLEBATCH_STUB_SPOOL"


# ------------------------------------------------------------------------------------- the fake client
class FakeBatch:
    """What the plugin asks of the Batch API: create a job, then its state (always FAILED)."""

    def __init__(self, spool: Path):
        self.spool = spool

    def create_job(self, request):
        from google.cloud import batch_v1  # here: the module imports without the plugin installed (the tests skip)

        job = batch_v1.Job.to_dict(request.job, preserving_proto_field_name=True)
        with open(self.spool / "jobs.jsonl", "a") as f:
            f.write(json.dumps({"parent": request.parent, "job_id": request.job_id, "job": job}) + "\n")
        return SimpleNamespace(name=f"{request.parent}/jobs/{request.job_id}", uid=request.job_id)

    def get_job(self, request):
        return SimpleNamespace(status=SimpleNamespace(state=SimpleNamespace(name="FAILED"), status_events=[]))


class FakeLogging:
    """Cloud Logging, which the plugin reads a finished job's log from: no entries."""

    def __init__(self, *args, **kwargs):
        pass

    def logger(self, name):
        return SimpleNamespace(list_entries=lambda **kwargs: [])


def stub_main(argv: list[str]) -> int:
    """Snakemake's command line, with the Batch and Logging clients replaced."""
    from google.cloud import batch_v1, logging  # here: see FakeBatch.create_job

    batch = FakeBatch(Path(os.environ[SPOOL_ENV]))
    batch_v1.BatchServiceClient = lambda *args, **kwargs: batch
    logging.Client = FakeLogging
    from snakemake.cli import main  # after the fakes are in place

    sys.argv = ["snakemake", *argv]
    return main()


if __name__ == "__main__":
    sys.exit(stub_main(sys.argv[1:]))


# ------------------------------------------------------------------------------------- the tests
PROFILE = ROOT / "profiles" / "googlebatch"
SMOKE_RUNS = 4  # halfspace seed-0/1, digits_mlp width-8/32
SMOKE_CHAIN = set(chain_rules()) - {"diffusion"}  # the chain's rules that the smoke study runs


def submit_smoke(work: Path, s3, device: str) -> tuple[subprocess.CompletedProcess, list[dict]]:  # noqa: F811
    """The smoke study (its config with `device` set) from `work`, a copy of the workflow, through
    profiles/googlebatch; the storage is the local S3 service. Returns Snakemake's result and the jobs."""
    pytest.importorskip("snakemake_executor_plugin_googlebatch", reason="pip install -e '.[test]' (Google Batch plugin)")
    url, client = s3
    bucket = f"landscope-gb-{device}-{abs(hash(str(work))) % 10**8}"
    client.create_bucket(Bucket=bucket)
    for name in ("Snakefile", "workflow", "envs"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["device"] = device
    (work / "smoke.yaml").write_text(yaml.safe_dump(config))
    (work / "spool").mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", SPOOL_ENV: str(work / "spool"),
           "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL": url, "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": "test",
           "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "test"}
    cmd = [sys.executable, __file__, "--configfile", "smoke.yaml", "--workflow-profile", str(PROFILE),
           "--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{bucket}/study",
           "--retries", "0"]
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900, check=False)
    spool = work / "spool" / "jobs.jsonl"
    jobs = [json.loads(line) for line in spool.read_text().splitlines()] if spool.exists() else []
    return out, jobs


def target_rules(command: str) -> set[str]:
    """The rules of the jobs a Batch job runs (from --target-jobs 'rule:wildcards' ...)."""
    jobs = command.split("--target-jobs ", 1)[1].split(" --", 1)[0]
    return {j.strip("'").split(":")[0] for j in jobs.split()}


@pytest.mark.parametrize(("device", "gpus"), [("cpu", []), ("cuda", [{"type_": "nvidia-tesla-t4", "count": "1"}])])
def test_googlebatch_jobs_ask_for_a_gpu_only_when_the_device_is_cuda(device, gpus, s3, tmp_path):  # noqa: F811
    """The first Batch jobs of the smoke DAG, one per run (the fake client keeps them, reports them failed)."""
    out, jobs = submit_smoke(tmp_path, s3, device)
    assert out.returncode != 0 and len(jobs) == SMOKE_RUNS, out.stderr[-3000:]
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert {j["parent"] for j in jobs} == {f"projects/{profile['googlebatch-project']}/locations/us-central1"}
    for submitted in jobs:
        job = submitted["job"]
        (instances,) = job["allocation_policy"]["instances"]
        policy = instances["policy"]
        assert policy["machine_type"] == "n1-standard-2"
        assert policy["boot_disk"]["image"] == "projects/batch-custom-image/global/images/family/batch-cos-stable-official"
        accelerators = [{"type_": a["type_"], "count": a["count"]} for a in policy["accelerators"]]
        assert accelerators == gpus and instances["install_gpu_drivers"] == bool(gpus)
        (group,) = job["task_groups"]
        task = group["task_spec"]
        # the group's largest googlebatch_memory (every job's is 2000) and one CPU, not mem_mb's sum
        resources = task["compute_resource"]  # int64 fields, which protobuf's dict form writes as text
        assert (resources["cpu_milli"], resources["memory_mib"]) == ("1000", "2000")
        assert task["max_run_duration"] == "21600s" and task["max_retry_count"] == 0
        setup, _write_snakefile, barrier, main = task["runnables"]
        assert barrier["barrier"]["name"] == "wait-for-setup"
        container = main["container"]
        assert container["image_uri"] == profile["container-image"]
        assert container["entrypoint"] == "/bin/bash" and container["commands"] == ["/tmp/workdir/entrypoint.sh"]
        # the setup script writes the Snakemake command into entrypoint.sh through an unquoted heredoc:
        # nothing in it may be expanded by the shell on the way
        script = setup["script"]["text"]
        command = script.split("cat <<EOF > /tmp/workdir/entrypoint.sh\n", 1)[1].split("\n", 1)[0]
        assert not set("$`\\") & set(command), command
        assert target_rules(command) == SMOKE_CHAIN  # the run's chain, one VM
        assert "--mode 'remote'" in command and "--default-storage-provider 's3'" in command
        secret_env = main["environment"]["variables"]
        assert {"SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "SNAKEMAKE_STORAGE_S3_SECRET_KEY"} <= set(secret_env)
