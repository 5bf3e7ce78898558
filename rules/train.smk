# Stage 4: train one architecture. Checkpoints live in results/train/{model}/checkpoints/
# (TensorBoard events in tensorboard/) and are deliberately not outputs: Snakemake keeps
# them when a run fails or is killed, and re-running the rule resumes from the newest one
# -- or, with a higher train.steps, extends the finished run.


rule train:
    input:
        manifest="results/shards/manifest.json",
        train="results/shards/train",
        valid="results/shards/valid",
    output:
        model="results/train/{model}/model.pt",
        best="results/train/{model}/best.pt",
        metrics="results/train/{model}/metrics.csv",
    log:
        "results/logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    conda:
        "../envs/train.yaml"
    threads: TRAIN["threads"]
    resources:
        **TRAIN_RESOURCES,
    params:
        arch=arch_flags,
        flags=cli_flags(TrainParams, TRAIN, skip=("threads",)),
        checkpoints="results/train/{model}/checkpoints",
    shell:
        TRAIN_LAUNCHER
        + " train --shards {input.manifest:q} --save_model_path {output.model:q}"
        " --save_checkpoint_path {params.checkpoints:q} {params.arch:q} {params.flags:q}"
        " --threads {threads:q} 2> {log:q}"
