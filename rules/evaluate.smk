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
        device="--use_gpu" if TRAIN_CFG["gpus"] > 0 else "",
        amp=TRAIN_CFG["amp"],
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
        "python -m gpt2 evaluate --model_path {input.model} --eval_corpus {input.manifest} --output {output}"
        " --name {wildcards.model} --batch_eval {params.batch} {params.device} --amp {params.amp}"
        " --threads {threads} > /dev/null 2> {log}"


rule export_hf:
    input:
        model="results/train/{model}/model.pt",
        vocab="results/corpus/vocab.txt",
    output:
        directory("results/hf/{model}"),
    log:
        "results/logs/export_hf/{model}.log",
    conda:
        "../envs/export.yaml"
    shell:
        "python -m gpt2 export --model_path {input.model} --vocab_path {input.vocab} --out {output} 2> {log}"
