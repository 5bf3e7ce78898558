"""SLURM: launch commands for GPUs and nodes, and the whole DAG on a real two-node SLURM cluster (one host)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

import slurm_cluster
from conftest import ROOT, TINY_CONFIG, serve, snakemake
from gpt2.launch import job_layout, launch_command, param_count, train_memory_mb
from gpt2.params import MODELS
from wikidump import three_part_dump

# One thread per process, as the test profile gives each of two training tasks: bf16 sums depend on it.
SLURM_CONFIG = {"train": {**TINY_CONFIG["train"], "steps": 20, "eval_every": 10, "checkpoint_every": 10, "threads": 1}}
PROFILE = ("--profile", str(ROOT / "profiles/slurm"), "--workflow-profile", str(ROOT / "tests/slurm_profile"))
LOCAL_RULES = {"list_dump", "fetch_part"}


def test_launch_commands_for_gpus_and_nodes():
    assert launch_command(gpus=0, nodes=1) == launch_command(gpus=1, nodes=1) == "python -m gpt2"
    assert launch_command(gpus=8, nodes=1) == "torchrun --standalone --nproc_per_node 8 -m gpt2"
    two_nodes = launch_command(gpus=4, nodes=2)
    assert two_nodes.startswith("export MASTER_ADDR=$(hostname); ")
    # the step's shape in full: the jobstep executor has removed the allocation's SLURM_NTASKS & co.
    assert ("srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --cpus-per-task $((4 * {threads})) --gres=gpu:4 "
            "--kill-on-bad-exit=1 torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d "
            "--rdzv_id $SLURM_JOB_ID --rdzv_endpoint $MASTER_ADDR:$((29500 + SLURM_JOB_ID % 1000)) -m gpt2") in two_nodes


def test_a_gpu_type_is_folded_into_each_nodes_gres():
    assert " --gres=gpu:h100:4 " in launch_command(gpus=4, nodes=2, gpu_model="h100")
    assert job_layout(4, 2, "h100")["gres"] == "gpu:h100:4" and "gpu_model" not in job_layout(4, 2, "h100")
    assert job_layout(8, 1, "a100") == {"gpu": 8, "nodes": 1, "gpu_model": "a100"}
    assert job_layout(0, 1, "a100") == {"gpu": 0, "nodes": 1}  # a CPU run asks for no GPU type


class _Resources(dict):
    __getattr__ = dict.__getitem__


def _train_job(tmp_path, train: dict, *extra: str) -> tuple[_Resources, str]:
    """The train job's resources and shell command as a dry run with the SLURM profile renders them."""
    proc = snakemake(tmp_path, "results/train/small/model.pt", config={"train": train},
                     extra=("-n", "--printshellcmds", "--profile", str(ROOT / "profiles/slurm"), *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = (proc.stdout + proc.stderr).split("rule train:")[1]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("resources:")).split("resources:")[1]
    pairs = (item.strip().split("=", 1) for item in line.split(", "))
    resources = _Resources({k: int(v) if v.isdigit() else v for k, v in pairs})
    command = next(ln for ln in block.splitlines() if "gpt2 train" in ln)
    return resources, command


def test_a_two_node_job_asks_each_node_for_its_gpus_and_nests_no_step(tmp_path):
    """train.nodes 2 x train.gpus 4: the plugin's own sbatch line, one task and 4 GPUs per node, and the
    multi-task route, in which the plugin starts no step around the rule's shell (our srun is the only one)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources, command = _train_job(tmp_path, {"gpus": 4, "nodes": 2, "batch_tokens": 8192, "micro_batch": 8})
    job = SimpleNamespace(resources=resources, threads=8)
    params = {"run_uuid": "x", "slurm_logfile": "log", "comment_str": "train", "account": "", "partition": "-p gpu",
              "workdir": str(tmp_path)}
    sbatch = (get_submit_command(job, params) + set_gres_string(job)).split()
    assert {"--nodes=2", "--ntasks=2", "--gres=gpu:4", "--cpus-per-gpu=8"} <= set(sbatch), sbatch
    assert not [w for w in sbatch if w.startswith(("--gpus=", "--ntasks-per-gpu"))], sbatch
    assert "mpi" in resources  # the jobstep plugin runs an mpi job's shell as it is, without `srun -n1`
    assert command.count("srun ") == 1 and "torchrun --nnodes 2 --nproc_per_node 4" in command
    # the step asks each node for its 4 GPUs and the CPUs of 4 processes of the rule's threads
    threads = re.search(r"--threads (\d+)", command)[1]
    assert f"--ntasks-per-node 1 --cpus-per-task $((4 * {threads})) --gres=gpu:4 " in command


@pytest.mark.parametrize("nodes, expect", [(2, "--gres=gpu:h100:4"), (1, "--gpus=h100:4")])
def test_the_sbatch_line_asks_for_the_gpu_type_once(tmp_path, nodes, expect):
    """Several nodes: gpu:h100:4 per node, no job-wide --gpus beside it; one node: the plugin's --gpus=h100:4."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    resources, _ = _train_job(tmp_path, {"gpus": 4, "nodes": nodes, "gpu_model": "h100", "batch_tokens": 8192,
                                         "micro_batch": 8})
    gres = set_gres_string(SimpleNamespace(resources=resources, threads=8)).split()
    assert gres == [expect], gres


def test_a_baseline_job_gets_a_gpu_node_and_its_models_memory_after_a_login_node_fetch(tmp_path):
    proc = snakemake(tmp_path, "results/baseline_gpt2-xl.json", config={"baselines": {"models": ["gpt2-xl"]}},
                     extra=("-n", "--profile", str(ROOT / "profiles/slurm")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"^localrules:\s+fetch_baseline,", (ROOT / "rules/evaluate.smk").read_text(), re.M)
    resources = re.search(r"rule baseline:.*?resources: ([^\n]*)", out, re.S)[1]
    # mem_mb follows the fetched weights (test_evaluate's hub test counts them): unknown before the fetch
    assert "slurm_partition=gpu" in resources and "gpu=1" in resources and "mem_mb=<TBD>" in resources, resources


def test_a_one_node_job_asks_for_its_gpus_and_the_plugin_runs_it_in_one_step(tmp_path):
    resources, command = _train_job(tmp_path, {"gpus": 8, "batch_tokens": 8192, "micro_batch": 8})
    assert resources["gpu"] == 8 and resources["nodes"] == 1 and "mpi" not in resources
    assert "srun" not in command and "torchrun --standalone --nproc_per_node 8" in command


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_train_jobs_memory_follows_the_models_shape(tmp_path, model):
    """mem_mb is computed from the parameters (counted as model.GPT has them) and the GPUs per node; the
    profile leaves it alone."""
    import torch

    from gpt2.model import GPT, GPTConfig

    arch = MODELS[model]
    with torch.device("meta"):
        params = GPT(GPTConfig(50257, 1024, arch.layers, arch.heads, arch.dims, 4, 0.0)).num_params()["total"]
    assert param_count(arch.layers, arch.dims, 50257, 1024, 4) == params
    shape = {"corpus": {"vocab_size": 50257}, "train": {"gpus": 8, "seq_len": 1024, "batch_tokens": 8192 * 8,
                                                        "micro_batch": 8}}
    proc = snakemake(tmp_path, f"results/train/{model}/model.pt", config=shape,
                     extra=("-n", "--profile", str(ROOT / "profiles/slurm")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    mem = int(re.search(r"rule train:.*?resources:.*?\bmem_mb=(\d+)", proc.stdout + proc.stderr, re.S)[1])
    # rank 0's two pending checkpoint copies of weights + AdamW moments, 8 processes' own memory and their
    # compile workers (train.compile auto compiles on CUDA)
    assert mem == train_memory_mb(params, 8, compiles=True) >= (2 * 12 * params + 8 * 7000 * 2 ** 20) / 2 ** 20


@pytest.mark.parametrize("train, launcher", [
    ({"gpus": 1}, "python -m gpt2 train"),
    ({"gpus": 8, "batch_tokens": 8192, "micro_batch": 8}, "torchrun --standalone --nproc_per_node 8 -m gpt2 train"),
    ({"gpus": 4, "nodes": 2, "batch_tokens": 8192, "micro_batch": 8},
     "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --cpus-per-task $((4 * 2)) --gres=gpu:4 --kill-on-bad-exit=1"),
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
def test_a_two_task_training_job_trains_the_curve_of_one_process(cluster, tiny_run, tmp_path):
    """train.nodes 2 through the profile: one SLURM job on the cluster's two nodes, one task each, each a
    torchrun of one gloo process, meeting at the c10d rendezvous on the first; its metrics are one process's."""
    two = {"train": {**SLURM_CONFIG["train"], "micro_batch": 16}}
    runs = {}
    for name, train, extra in (("slurm", {"nodes": 2}, PROFILE), ("local", {}, ())):
        work = tmp_path / name
        for sub in ("resources", "results/expanda", "results/corpus", "results/parts", "results/shards"):
            shutil.copytree(tiny_run / sub, work / sub)
        proc = snakemake(work, "results/train/tiny/model.pt", config={"train": {**two["train"], **train}},
                         extra=extra, env=cluster if extra else None)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        runs[name] = [line.split(",")[:4] for line in (work / "results/train/tiny/metrics.csv").read_text().splitlines()]
        if extra:
            log = proc.stdout + proc.stderr
            jobs = re.findall(r"SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", log)
            assert [rule for _, rule in jobs] == ["train"], log[-3000:]
            show = subprocess.run(["scontrol", "show", "job", jobs[0][0]], capture_output=True, text=True,
                                  env=cluster).stdout
            assert "NumNodes=2" in show and "NodeList=n[1-2]" in show and "JobState=COMPLETED" in show, show
            train_log = (work / "results/logs/train/tiny.log").read_text()
            assert train_log.count("loop:") == 1  # rank 0 of the two processes reports
    assert len(runs["slurm"]) == 3 and runs["slurm"] == runs["local"]


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
