# Stage 5: test-set metrics of a trained model (keys in docs/training.md).


rule evaluate:
    input:
        model=EVAL_MODEL,
        manifest="results/shards/manifest.json",
        train="results/shards/train",
        test="results/shards/test",
    output:
        "results/eval_{model}.json",
    log:
        "results/logs/evaluate/{model}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}.tsv"
    conda:
        "../envs/train.yaml"
    threads: TRAIN["threads"]
    resources:
        gpu=min(1, TRAIN["gpus"]),
        mem_mb=eval_mem_mb,
    params:
        flags=cli_flags(EvaluateParams, config["evaluate"]),
        hardware=eval_hardware_flags(),
    shell:
        "python -m gpt2 evaluate --model_path {input.model:q} --shards {input.manifest:q} --output {output:q}"
        " --name {wildcards.model:q} {params.flags:q} {params.hardware:q} --threads {threads:q}"
        " > /dev/null 2> {log:q}"


# Ours scored as the baselines are (overlapping windows, results/tables/baselines.csv): each prediction
# with at least context - stride tokens before it, at the baselines' context where ours allows it.
rule evaluate_strided:
    input:
        model=EVAL_MODEL,
        manifest="results/shards/manifest.json",
        train="results/shards/train",
        test="results/shards/test",
    output:
        "results/eval_{model}_strided.json",
    log:
        "results/logs/evaluate_strided/{model}.log",
    benchmark:
        "results/benchmarks/evaluate_strided/{model}.tsv"
    conda:
        "../envs/train.yaml"
    threads: TRAIN["threads"]
    resources:
        gpu=min(1, TRAIN["gpus"]),
        mem_mb=eval_mem_mb,
    params:
        flags=cli_flags(EvaluateParams, config["evaluate"]),
        windows=baseline_windows(),
        hardware=eval_hardware_flags(),
    shell:
        "python -m gpt2 evaluate --model_path {input.model:q} --shards {input.manifest:q} --output {output:q}"
        " --name {wildcards.model:q} {params.flags:q} {params.windows:q} {params.hardware:q}"
        " --threads {threads:q} > /dev/null 2> {log:q}"


# Hub models are downloaded where the network is: on a cluster, the login node.
localrules:
    fetch_baseline,


rule fetch_baseline:
    output:
        directory("resources/hf/{baseline}"),
    log:
        "results/logs/fetch_baseline/{baseline}.log",
    conda:
        "../envs/export.yaml"
    params:
        hf=hub_id,
    shell:
        "python -m gpt2 fetch-hf --hf {params.hf:q} --out {output:q} 2> {log:q}"


rule baseline:
    input:
        unpack(baseline_input),
        manifest="results/shards/manifest.json",
        test="results/shards/test",
    output:
        "results/baseline_{baseline}.json",
    log:
        "results/logs/baseline/{baseline}.log",
    benchmark:
        "results/benchmarks/baseline/{baseline}.tsv"
    conda:
        "../envs/export.yaml"
    threads: TRAIN["threads"]
    resources:
        gpu=min(1, TRAIN["gpus"]),
        mem_mb=baseline_mem_mb,
    params:
        flags=cli_flags(EvaluateParams, config["evaluate"])
        + cli_flags(BaselineParams, config["baselines"]),
        hardware=eval_hardware_flags(),
    shell:
        "python -m gpt2 evaluate --hf {input.folder:q} --shards {input.manifest:q} --output {output:q}"
        " --name {wildcards.baseline:q} {params.flags:q} {params.hardware:q} --threads {threads:q}"
        " > /dev/null 2> {log:q}"


rule export_hf:
    input:
        model=EVAL_MODEL,
        vocab=VOCAB,
        evaluation="results/eval_{model}.json",
        info=DUMP_INFO,
    output:
        directory("results/hf/{model}"),
    log:
        "results/logs/export_hf/{model}.log",
    conda:
        "../envs/export.yaml"
    shell:
        "python -m gpt2 export --model_path {input.model:q} --vocab_path {input.vocab:q} --out {output:q}"
        " --evaluation {input.evaluation:q} --dump_info {input.info:q} 2> {log:q}"
