"""SLURM: launch commands for GPUs and nodes, and the whole DAG on a real one-node SLURM cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

import slurm_cluster
from conftest import ROOT, TINY_CONFIG, serve, snakemake
from gpt2.launch import launch_command
from wikidump import three_part_dump

SLURM_CONFIG = {"train": {**TINY_CONFIG["train"], "steps": 20, "eval_every": 10, "checkpoint_every": 10}}
PROFILE = ("--profile", str(ROOT / "profiles/slurm"), "--workflow-profile", str(ROOT / "tests/slurm_profile"))
LOCAL_RULES = {"list_dump", "fetch_part"}


def test_launch_commands_for_gpus_and_nodes():
    assert launch_command(gpus=0, nodes=1) == launch_command(gpus=1, nodes=1) == "python -m gpt2"
    assert launch_command(gpus=8, nodes=1) == "torchrun --standalone --nproc_per_node 8 -m gpt2"
    two_nodes = launch_command(gpus=4, nodes=2)
    assert two_nodes.startswith('export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); ')
    assert ("srun --nodes 2 --ntasks-per-node 1 torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d "
            "--rdzv_id $SLURM_JOB_ID --rdzv_endpoint $MASTER_ADDR:29500 -m gpt2") in two_nodes


@pytest.mark.parametrize("train, launcher", [
    ({"gpus": 1}, "python -m gpt2 train"),
    ({"gpus": 8, "batch_tokens": 8192, "micro_batch": 8}, "torchrun --standalone --nproc_per_node 8 -m gpt2 train"),
    ({"gpus": 4, "nodes": 2, "batch_tokens": 8192, "micro_batch": 8}, "srun --nodes 2 --ntasks-per-node 1 torchrun"),
])
def test_the_train_rule_renders_the_launcher(tmp_path, train, launcher):
    proc = snakemake(tmp_path, "results/train/small/model.pt", config={"train": train},
                     extra=("-n", "--printshellcmds"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert launcher in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lack = slurm_cluster.missing()
    if lack:
        pytest.skip(f"no local SLURM possible here (missing: {', '.join(lack)}); .ci/run installs it")
    root = tmp_path_factory.mktemp("slurm")
    try:
        env = slurm_cluster.start(root)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        if os.environ.get("GPT2_REQUIRE_SLURM"):  # CI installs SLURM: there, not starting is a failure
            raise
        slurm_cluster.stop(root, {**os.environ, "SLURM_CONF": str(root / "slurm.conf")})
        pytest.skip(f"the local SLURM cluster did not start ({exc}); logs in {root}")
    yield env
    slurm_cluster.stop(root, env)


@pytest.mark.slurm
def test_whole_pipeline_runs_as_slurm_jobs(cluster, tmp_path):
    work = tmp_path / "slurm"
    work.mkdir()
    proc = snakemake(work, "results/eval_tiny.json", config=SLURM_CONFIG, extra=PROFILE, env=cluster)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    log = proc.stdout + proc.stderr
    jobs = {rule: job for job, rule in re.findall(r"SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", log)}
    assert set(jobs) == {"patch_expanda", "extract_chunk", "gather_bucket", "train_vocab", "tokenize_bucket",
                         "gather_corpus", "shard_bucket", "make_shards", "train", "evaluate"}, log[-3000:]
    assert not LOCAL_RULES & set(jobs)
    for rule, job in jobs.items():  # slurmctld remembers finished jobs (MinJobAge)
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=cluster).stdout
        assert "JobState=COMPLETED" in show and "Partition=local" in show, (rule, show)

    # The same config run locally from the same corpus gives the same shards, losses and metrics.
    local = tmp_path / "local"
    for sub in ("resources", "results/expanda", "results/corpus"):
        shutil.copytree(work / sub, local / sub)
    proc = snakemake(local, "results/eval_tiny.json", config=SLURM_CONFIG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in ("results/shards/manifest.json", "results/eval_tiny.json"):
        a, b = (json.loads((d / path).read_text()) for d in (work, local))
        a.pop("tokens_per_second"), b.pop("tokens_per_second")
        assert a == b, path
    rows = [[line.split(",")[:4] for line in (d / "results/train/tiny/metrics.csv").read_text().splitlines()]
            for d in (work, local)]
    assert rows[0] == rows[1]


@pytest.mark.slurm
def test_a_three_part_wiki_is_built_by_slurm_jobs(cluster, tmp_path):
    """Fetches stay on the login node; every extraction and gather job is a SLURM job."""
    files = three_part_dump("enwiki", "20260101")
    config = {"dump": {"source": "wiki", "wiki": "enwiki", "date": "20260101"}, "corpus": {"extract_jobs": 3, "buckets": 3}}
    for server in serve({f"/enwiki/20260101/{name}": data for name, data in files.items()}):
        config["dump"]["mirror"] = server.base
        proc = snakemake(tmp_path, "results/corpus/corpus.raw.txt", config=config, extra=PROFILE, env=cluster)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    jobs = re.findall(r"SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", log)
    assert sorted(rule for _, rule in jobs) == sorted(["patch_expanda", "train_vocab", "gather_corpus"]
                                                      + ["extract_chunk", "gather_bucket", "tokenize_bucket"] * 3)
    assert not LOCAL_RULES & {rule for _, rule in jobs}
    for job, rule in jobs:
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=cluster).stdout
        assert "JobState=COMPLETED" in show, (rule, show)
    assert (tmp_path / "results/corpus/corpus.articles.tsv").read_text().count("\n") == 98  # header + 97
