# Stage 1: the dump as a listing of its files (the sample, a URL or a path: one file; a whole wiki:
# its pages-articles-multistream files), then one fetch job per file, verified.


# Downloads need the internet: on a cluster they run on the login node.
localrules:
    list_dump,
    fetch_part,


# The dump's files; the DAG of fetch and extraction jobs follows from them.
checkpoint list_dump:
    output:
        f"{DUMP_DIR}/files.json",
    log:
        "results/logs/list_dump.log",
    benchmark:
        "results/benchmarks/list_dump.tsv"
    conda:
        "../envs/dump.yaml"
    params:
        flags=dump_flags(),
    shell:
        "python -m gpt2 list-dump --out {output:q} {params.flags:q} 2> {log:q}"


rule fetch_part:
    input:
        f"{DUMP_DIR}/files.json",
    output:
        f"{DUMP_DIR}/{{file}}",
    log:
        "results/logs/fetch_part/{file}.log",
    benchmark:
        "results/benchmarks/fetch_part/{file}.tsv"
    wildcard_constraints:
        file=r"[A-Za-z0-9_.-]+\.bz2",
    conda:
        "../envs/dump.yaml"
    params:
        flags=dump_flags(),
    shell:
        "python -m gpt2 fetch-part --listing {input:q} --file {wildcards.file:q} --out {output:q}"
        " {params.flags:q} 2> {log:q}"
