# Stage 3: token lines -> uint16 shards + manifest.json (layout in src/gpt2/shards.py).


rule make_shards:
    input:
        vocab="results/corpus/vocab.txt",
        train="results/corpus/corpus.train.txt",
        test="results/corpus/corpus.test.txt",
    output:
        manifest="results/shards/manifest.json",
        train=directory("results/shards/train"),
        test=directory("results/shards/test"),
    log:
        "results/logs/make_shards.log",
    benchmark:
        "results/benchmarks/make_shards.tsv"
    conda:
        "../envs/train.yaml"
    params:
        flags=cli_flags(ShardsParams, config["shards"]),
    shell:
        "python -m gpt2 make-shards --vocab_path {input.vocab} --train_corpus {input.train}"
        " --test_corpus {input.test} --out results/shards {params.flags} 2> {log}"
