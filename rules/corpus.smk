# Stage 2: expanda, patched as a rule (site-packages untouched), builds the corpus.


rule patch_expanda:
    input:
        patches=sorted(glob.glob(os.path.join(workflow.basedir, "patches", "*.patch"))),
    output:
        directory("results/expanda"),
    log:
        "results/logs/patch_expanda.log",
    benchmark:
        "results/benchmarks/patch_expanda.tsv"
    conda:
        "../envs/corpus.yaml"
    shell:
        "python -m gpt2 patch-expanda --out {output} --patches {input.patches} 2> {log}"


rule build_corpus:
    input:
        dump=DUMP,
        info=DUMP_INFO,
        expanda="results/expanda",
        reuse=INPUT_VOCAB,
    output:
        **ARTICLES,
        vocab="results/corpus/vocab.txt",
        raw="results/corpus/corpus.raw.txt",
        train="results/corpus/corpus.train.txt",
        valid="results/corpus/corpus.valid.txt",
        test="results/corpus/corpus.test.txt",
    log:
        "results/logs/build_corpus.log",
    benchmark:
        "results/benchmarks/build_corpus.tsv"
    conda:
        "../envs/corpus.yaml"
    threads: config["corpus"]["threads"]
    params:
        flags=cli_flags(CorpusParams, config["corpus"], skip=("threads",)),
    shell:
        "python -m gpt2 build-corpus --dump {input.dump} --expanda {input.expanda}"
        " --out results/corpus --threads {threads} {params.flags} 2> {log}"
