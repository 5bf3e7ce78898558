# Stage 1: the Wikipedia dump (bundled sample, download, local file, or a whole wiki), verified.

if not WIKI:

    # Downloads need the internet: on a cluster they run on the login node.
    localrules:
        fetch_dump,

    rule fetch_dump:
        output:
            dump=DUMP,
            info=DUMP_INFO,
        log:
            "results/logs/fetch_dump.log",
        benchmark:
            "results/benchmarks/fetch_dump.tsv"
        conda:
            "../envs/dump.yaml"
        params:
            flags=dump_flags(),
        shell:
            "python -m gpt2 fetch-dump --out {output.dump:q} {params.flags:q} 2> {log:q}"

else:

    localrules:
        list_dump,
        fetch_part,

    # The dump's files (dumpstatus.json); the DAG of fetch and extraction jobs follows from it.
    checkpoint list_dump:
        output:
            f"{WIKI_DIR}/files.json",
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
            f"{WIKI_DIR}/files.json",
        output:
            f"{WIKI_DIR}/{{file}}",
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
