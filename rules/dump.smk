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
            "python -m gpt2 fetch-dump --out {output.dump} {params.flags} 2> {log}"

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
            "python -m gpt2 list-dump --out {output} {params.flags} 2> {log}"

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
            file=r"[^/]+\.bz2",
        conda:
            "../envs/dump.yaml"
        params:
            flags=dump_flags(),
        shell:
            "python -m gpt2 fetch-part --listing {input} --file {wildcards.file} --out {output}"
            " {params.flags} 2> {log}"
