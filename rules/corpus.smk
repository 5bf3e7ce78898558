# Stage 2: expanda, patched as a rule (site-packages untouched), builds the corpus.


rule patch_expanda:
    input:
        patches=sorted(glob.glob(os.path.join(workflow.basedir, "patches", "*.patch"))),
    output:
        directory("results/expanda"),
    params:
        patches=os.path.join(workflow.basedir, "patches"),
    log:
        "results/logs/patch_expanda.log",
    benchmark:
        "results/benchmarks/patch_expanda.tsv"
    conda:
        "../envs/corpus.yaml"
    shell:
        "python -m gpt2 patch-expanda --out {output} --patches {params.patches} 2> {log}"


rule build_corpus:
    input:
        dump=DUMP,
        info=DUMP_INFO,
        expanda="results/expanda",
    output:
        vocab="results/corpus/vocab.txt",
        raw="results/corpus/corpus.raw.txt",
        train="results/corpus/corpus.train.txt",
        test="results/corpus/corpus.test.txt",
    params:
        flags=corpus_flags(),
    threads: config["corpus"]["threads"]
    log:
        "results/logs/build_corpus.log",
    benchmark:
        "results/benchmarks/build_corpus.tsv"
    conda:
        "../envs/corpus.yaml"
    shell:
        "python -m gpt2 build-corpus --dump {input.dump} --expanda {input.expanda}"
        " --out results/corpus --threads {threads} {params.flags} 2> {log}"
