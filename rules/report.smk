# Stage 6: figures and tables for `snakemake --report` (make report builds them first).
# A table is shown twice, as HTML and as its CSV download; the caption goes with the HTML only.


rule plot_training:
    input:
        "results/train/{model}/metrics.csv",
    output:
        loss=report(
            "results/plots/{model}/loss.png",
            caption="../report/loss.rst",
            category="Training curves",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "loss (four views)"},
        ),
        lr=report(
            "results/plots/{model}/lr.png",
            caption="../report/lr.rst",
            category="Training curves",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "learning rate"},
        ),
        speed=report(
            "results/plots/{model}/throughput.png",
            caption="../report/throughput.rst",
            category="Training curves",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "throughput"},
        ),
    log:
        "results/logs/plot_training/{model}.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m gpt2 plot-training --metrics {input:q} --loss {output.loss:q} --lr {output.lr:q}"
        " --speed {output.speed:q} --model {wildcards.model:q} 2> {log:q}"


rule samples:
    input:
        model="results/train/{model}/model.pt",
        vocab=VOCAB,
    output:
        report(
            "results/samples/{model}.txt",
            caption="../report/samples.rst",
            category="Samples",
            labels={"model": "{model}"},
        ),
    log:
        "results/logs/samples/{model}.log",
    benchmark:
        "results/benchmarks/samples/{model}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        flags=cli_flags(ReportParams, config["report"]),
    shell:
        "python -m gpt2 samples --model_path {input.model:q} --vocab_path {input.vocab:q} --output {output:q}"
        " {params.flags:q} 2> {log:q}"


rule evaluation_table:
    input:
        expand("results/eval_{model}.json", model=REPORT_MODELS),
    output:
        csv=report(
            "results/tables/evaluation.csv",
            category="Evaluation",
            labels={"table": "evaluation", "format": "csv"},
        ),
        html=report(
            "results/tables/evaluation.html",
            caption="../report/evaluation.rst",
            category="Evaluation",
            labels={"table": "evaluation", "format": "html"},
        ),
    log:
        "results/logs/evaluation_table.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m gpt2 table evaluation --inputs {input:q} --csv {output.csv:q} --html {output.html:q} 2> {log:q}"


rule corpus_table:
    input:
        manifest="results/shards/manifest.json",
        info=DUMP_INFO,
    output:
        csv=report(
            "results/tables/corpus.csv",
            category="Corpus",
            labels={"table": "corpus", "format": "csv"},
        ),
        html=report(
            "results/tables/corpus.html",
            caption="../report/corpus.rst",
            category="Corpus",
            labels={"table": "corpus", "format": "html"},
        ),
    log:
        "results/logs/corpus_table.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m gpt2 table corpus --inputs {input.manifest:q} {input.info:q} --csv {output.csv:q}"
        " --html {output.html:q} 2> {log:q}"


rule audit_table:
    input:
        "results/corpus/audit.json",
    output:
        csv=report(
            "results/tables/audit.csv",
            category="Corpus",
            labels={"table": "audit", "format": "csv"},
        ),
        html=report(
            "results/tables/audit.html",
            caption="../report/audit.rst",
            category="Corpus",
            labels={"table": "audit", "format": "html"},
        ),
    log:
        "results/logs/audit_table.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m gpt2 table audit --inputs {input:q} --csv {output.csv:q} --html {output.html:q} 2> {log:q}"


rule downstream_table:
    input:
        expand("results/downstream_{model}.json", model=REPORT_MODELS),
    output:
        csv=report(
            "results/tables/downstream.csv",
            category="Evaluation",
            labels={"table": "downstream", "format": "csv"},
        ),
        html=report(
            "results/tables/downstream.html",
            caption="../report/downstream.rst",
            category="Evaluation",
            labels={"table": "downstream", "format": "html"},
        ),
    log:
        "results/logs/downstream_table.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m gpt2 table downstream --inputs {input:q} --csv {output.csv:q} --html {output.html:q} 2> {log:q}"


rule baselines_table:
    input:
        expand("results/eval_{model}.json", model=REPORT_MODELS),
        expand("results/eval_{model}_strided.json", model=REPORT_MODELS),
        expand("results/baseline_{baseline}.json", baseline=BASELINES),
    output:
        csv=report(
            "results/tables/baselines.csv",
            category="Evaluation",
            labels={"table": "baselines", "format": "csv"},
        ),
        html=report(
            "results/tables/baselines.html",
            caption="../report/baselines.rst",
            category="Evaluation",
            labels={"table": "baselines", "format": "html"},
        ),
    log:
        "results/logs/baselines_table.log",
    conda:
        "../envs/report.yaml"
    shell:
        "python -m gpt2 table baselines --inputs {input:q} --csv {output.csv:q} --html {output.html:q} 2> {log:q}"


rule runtime_table:
    # The evaluations come last in the DAG: once they exist, so do all benchmark files read here.
    input:
        expand("results/eval_{model}.json", model=REPORT_MODELS),
    output:
        csv=report(
            "results/tables/runtime.csv",
            category="Runtime",
            labels={"table": "runtime", "format": "csv"},
        ),
        html=report(
            "results/tables/runtime.html",
            caption="../report/runtime.rst",
            category="Runtime",
            labels={"table": "runtime", "format": "html"},
        ),
    log:
        "results/logs/runtime_table.log",
    conda:
        "../envs/report.yaml"
    params:
        benchmarks=benchmark_files(REPORT_MODELS),
    shell:
        "python -m gpt2 table runtime --inputs {params.benchmarks:q} --csv {output.csv:q} --html {output.html:q} 2> {log:q}"


# Everything the report shows; `make report` builds this, then runs --report.
rule report_all:
    input:
        expand("results/plots/{model}/loss.png", model=REPORT_MODELS),
        expand("results/samples/{model}.txt", model=REPORT_MODELS),
        "results/tables/evaluation.html",
        "results/tables/corpus.html",
        "results/tables/audit.html",
        "results/tables/downstream.html",
        # only with baselines.models: the default needs no network
        ["results/tables/baselines.html"] if BASELINES else [],
        "results/tables/runtime.html",
