# Stage 1: the Wikipedia dump (bundled sample, download, or local file), verified.


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
