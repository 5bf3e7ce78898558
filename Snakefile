# GPT-2 on Wikipedia: dump -> patched expanda -> corpus -> shards -> train -> evaluate (and downstream
# tasks) -> report.
# `snakemake --cores 8 results/eval_small.json`; docs/pipeline.md and docs/training.md explain every stage.

import os

from snakemake.utils import min_version

min_version("9.0")


# The defaults; --configfile / --config are merged over them.
configfile: os.path.join(workflow.basedir, "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/dump.smk"
include: "rules/corpus.smk"
include: "rules/shards.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/downstream.smk"
include: "rules/report.smk"


rule all:
    input:
        "results/eval_small.json",
