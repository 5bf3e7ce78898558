# Stage 2: expanda, patched as a rule (site-packages untouched), builds the corpus in scatter-gather
# jobs: one extraction per file or piece, then per bucket; every dump source takes this one path.


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
        "python -m gpt2 patch-expanda --out {output:q} --patches {input.patches:q} 2> {log:q}"


# Scatter: one job per file or piece; its articles go to buckets by a seeded hash of the page id.
rule extract_chunk:
    input:
        unpack(extract_inputs),
    output:
        directory("results/parts/extracted/{file}/{piece}"),
    log:
        "results/logs/extract_chunk/{file}/{piece}.log",
    benchmark:
        "results/benchmarks/extract_chunk/{file}/{piece}.tsv"
    wildcard_constraints:
        piece=r"\d+",
    conda:
        "../envs/corpus.yaml"
    threads: config["corpus"]["threads"]
    params:
        piece=piece_flags,
        flags=corpus_flags(
            "min_length",
            "max_length",
            "max_page_bytes",
            "split_sent",
            "list_pages",
            "seed",
            "buckets",
        ),
    shell:
        "python -m gpt2 extract-chunk --dump {input.dump:q} {params.piece:q} --expanda {input.expanda:q}"
        " --out {output:q} --threads {threads:q} {params.flags:q} 2> {log:q}"


# Gather: each bucket from every piece, in hash order, with each article's split.
rule gather_bucket:
    input:
        extracted_dirs,
    output:
        directory("results/parts/buckets/{bucket}"),
    log:
        "results/logs/gather_bucket/{bucket}.log",
    benchmark:
        "results/benchmarks/gather_bucket/{bucket}.tsv"
    wildcard_constraints:
        bucket=r"\d+",
    conda:
        "../envs/corpus.yaml"
    params:
        flags=corpus_flags("split_ratio", "valid_ratio", "seed", "buckets"),
    shell:
        "python -m gpt2 gather-bucket --extracted {input:q} --bucket {wildcards.bucket:q} --out {output:q}"
        " {params.flags:q} 2> {log:q}"


rule train_vocab:
    input:
        buckets=BUCKETS,
        expanda="results/expanda",
        reuse=INPUT_VOCAB,
    output:
        VOCAB,
    log:
        "results/logs/train_vocab.log",
    benchmark:
        "results/benchmarks/train_vocab.tsv"
    conda:
        "../envs/corpus.yaml"
    params:
        flags=corpus_flags(
            "tokenizer", "vocab_size", "limit_alphabet", "subset_size", "input_vocab"
        ),
    shell:
        "python -m gpt2 train-vocab --bucket_dirs {input.buckets:q} --expanda {input.expanda:q} --out {output:q}"
        " {params.flags:q} 2> {log:q}"


rule tokenize_bucket:
    input:
        bucket="results/parts/buckets/{bucket}",
        vocab=VOCAB,
        expanda="results/expanda",
    output:
        "results/parts/tokens/{bucket}.txt",
    log:
        "results/logs/tokenize_bucket/{bucket}.log",
    benchmark:
        "results/benchmarks/tokenize_bucket/{bucket}.tsv"
    wildcard_constraints:
        bucket=r"\d+",
    conda:
        "../envs/corpus.yaml"
    shell:
        "python -m gpt2 tokenize-bucket --bucket {input.bucket:q} --vocab {input.vocab:q}"
        " --expanda {input.expanda:q} --out {output:q} 2> {log:q}"


rule gather_corpus:
    input:
        listing=f"{DUMP_DIR}/files.json",
        dumps=dump_files,
        extracted=extracted_dirs,
        buckets=BUCKETS,
        tokens=[f"results/parts/tokens/{b}.txt" for b in range(len(BUCKETS))],
    output:
        articles="results/corpus/corpus.articles.tsv",
        raw="results/corpus/corpus.raw.txt",
        train="results/corpus/corpus.train.txt",
        valid="results/corpus/corpus.valid.txt",
        test="results/corpus/corpus.test.txt",
        audit="results/corpus/audit.json",
        info=DUMP_INFO,
    log:
        "results/logs/gather_corpus.log",
    benchmark:
        "results/benchmarks/gather_corpus.tsv"
    conda:
        "../envs/corpus.yaml"
    shell:
        "python -m gpt2 gather-corpus --listing {input.listing:q} --extracted {input.extracted:q}"
        " --bucket_dirs {input.buckets:q} --tokens {input.tokens:q} --out results/corpus --info {output.info:q}"
        " 2> {log:q}"
