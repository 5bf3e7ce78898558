# Stage 5: test-set metrics of a trained model (keys in README.md).


rule evaluate:
    input:
        model="results/train/{model}/model.pt",
        manifest="results/shards/manifest.json",
        train="results/shards/train",
        test="results/shards/test",
    output:
        "results/eval_{model}.json",
    params:
        batch=config["evaluate"]["batch_size"],
        device=train_device(),
    threads: TRAIN_CFG["threads"]
    resources:
        gpu=min(1, TRAIN_CFG["gpus"]),
        mem_mb=TRAIN_CFG["mem_mb"],
    log:
        "results/logs/evaluate/{model}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "python -m gpt2 evaluate --model_path {input.model} --shards {input.manifest} --output {output}"
        " --name {wildcards.model} --batch_eval {params.batch} --device {params.device}"
        " --threads {threads} 2> {log}"
