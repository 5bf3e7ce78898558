# Stage 4: train one architecture. Checkpoints live in results/train/{model}/checkpoints/
# and are deliberately not outputs: Snakemake keeps them when a run fails or is
# killed, and re-running the rule resumes from the newest one.


rule train:
    input:
        manifest="results/shards/manifest.json",
        train="results/shards/train",
        test="results/shards/test",
    output:
        model="results/train/{model}/model.pt",
        metrics="results/train/{model}/metrics.csv",
    params:
        launcher=train_launcher(),
        arch=arch_flags,
        flags=train_flags(),
    threads: TRAIN_CFG["threads"]
    resources:
        gpu=TRAIN_CFG["gpus"],
        nodes=TRAIN_CFG["nodes"],
        mem_mb=TRAIN_CFG["mem_mb"],
        runtime=TRAIN_CFG["runtime"],
    log:
        "results/logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "{params.launcher} train --eval_corpus {input.manifest} --save_model_path {output.model}"
        " --save_checkpoint_path results/train/{wildcards.model}/checkpoints"
        " {params.arch} {params.flags} --threads {threads} 2> {log}"
