# Stage 7: downstream tasks built from the test split's articles, scored by lm-evaluation-harness
# on a model's export (with any lm-eval tasks listed in downstream.extra_tasks).


rule build_tasks:
    input:
        articles="results/corpus/corpus.articles.tsv",
        raw="results/corpus/corpus.raw.txt",
    output:
        directory("results/tasks"),
    log:
        "results/logs/build_tasks.log",
    conda:
        "../envs/downstream.yaml"
    params:
        seed=config["corpus"]["seed"],
        flags=cli_flags(
            DownstreamParams, config["downstream"], skip=("extra_tasks", "batch")
        ),
    shell:
        "python -m gpt2 build-tasks --articles {input.articles:q} --raw {input.raw:q} --out {output:q}"
        " --seed {params.seed:q} {params.flags:q} 2> {log:q}"


rule downstream:
    input:
        model="results/hf/{model}",
        tasks="results/tasks",
        manifest="results/shards/manifest.json",
    output:
        "results/downstream_{model}.json",
    log:
        "results/logs/downstream/{model}.log",
    benchmark:
        "results/benchmarks/downstream/{model}.tsv"
    conda:
        "../envs/downstream.yaml"
    params:
        flags=cli_flags(DownstreamParams, config["downstream"]),
    shell:
        "python -m gpt2 downstream --model_dir {input.model:q} --tasks {input.tasks:q} --shards {input.manifest:q}"
        " --out {output:q} --model {wildcards.model:q} {params.flags:q} 2> {log:q}"
