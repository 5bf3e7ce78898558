# Stage 3: token lines -> uint16 shards + manifest.json (layout in src/gpt2/shards.py);
# whole wikis shard per bucket.


if not WIKI:

    rule make_shards:
        input:
            **ARTICLES,
            vocab="results/corpus/vocab.txt",
            train="results/corpus/corpus.train.txt",
            valid="results/corpus/corpus.valid.txt",
            test="results/corpus/corpus.test.txt",
            raw="results/corpus/corpus.raw.txt",
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
            articles=articles_flag,
        shell:
            "python -m gpt2 make-shards --vocab_path {input.vocab} --train_corpus {input.train}"
            " --valid_corpus {input.valid} --test_corpus {input.test} --raw_corpus {input.raw}"
            " {params.articles} --out results/shards {params.flags} 2> {log}"

else:

    # Whole wikis: one sharding job per bucket, then the manifest over all of them.
    rule shard_bucket:
        input:
            bucket="results/wiki/buckets/{bucket}",
            tokens="results/wiki/tokens/{bucket}.txt",
            vocab="results/corpus/vocab.txt",
        output:
            directory("results/wiki/shards/{bucket}"),
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
            "python -m gpt2 shard-bucket --bucket {input.bucket} --tokens {input.tokens}"
            " --vocab_path {input.vocab} --out {output} {params.flags} 2> {log}"

    rule make_shards:
        input:
            buckets=[f"results/wiki/shards/{b}" for b in range(len(BUCKETS))],
            vocab="results/corpus/vocab.txt",
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
            "python -m gpt2 gather-shards --buckets {input.buckets} --vocab_path {input.vocab}"
            " --train_corpus {input.train} --valid_corpus {input.valid} --test_corpus {input.test}"
            " --out results/shards {params.flags} 2> {log}"
