# Stage 3: token lines -> uint16 shards + manifest.json (layout in src/gpt2/shards.py), per bucket.


# One sharding job per bucket, then the manifest over all of them.
rule shard_bucket:
    input:
        bucket="results/parts/buckets/{bucket}",
        tokens="results/parts/tokens/{bucket}.txt",
        vocab=VOCAB,
    output:
        directory("results/parts/shards/{bucket}"),
    log:
        "results/logs/shard_bucket/{bucket}.log",
    benchmark:
        "results/benchmarks/shard_bucket/{bucket}.tsv"
    wildcard_constraints:
        bucket=r"\d+",
    conda:
        "../envs/train.yaml"
    params:
        flags=cli_flags(ShardsParams, config["shards"]),
    shell:
        "python -m gpt2 shard-bucket --bucket {input.bucket:q} --tokens {input.tokens:q}"
        " --vocab_path {input.vocab:q} --out {output:q} {params.flags:q} 2> {log:q}"


rule make_shards:
    input:
        buckets=[f"results/parts/shards/{b}" for b in range(len(BUCKETS))],
        vocab=VOCAB,
        train="results/corpus/corpus.train.txt",
        valid="results/corpus/corpus.valid.txt",
        test="results/corpus/corpus.test.txt",
    output:
        manifest="results/shards/manifest.json",
        train=directory("results/shards/train"),
        valid=directory("results/shards/valid"),
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
        "python -m gpt2 gather-shards --bucket_dirs {input.buckets:q} --vocab_path {input.vocab:q}"
        " --train_corpus {input.train:q} --valid_corpus {input.valid:q} --test_corpus {input.test:q}"
        " --out results/shards {params.flags:q} 2> {log:q}"
