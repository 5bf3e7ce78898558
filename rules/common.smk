# Shared helpers: config validation, tool paths, and the values rules pass as params.

import glob
import os
import shlex
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from gpt2 import UserError
from gpt2.config import check_config
from gpt2.dump import dump_name

try:
    check_config(config, os.path.join(workflow.basedir, "schemas", "config.schema.yaml"))
except UserError as exc:
    sys.exit(f"error: {exc}")

# Jobs run `python -m gpt2`: take the interpreter Snakemake runs under (the
# project's .venv) and this checkout's sources, also inside conda envs.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [os.path.join(workflow.basedir, "src"), os.environ.get("PYTHONPATH", "")] if p
)


def flags(**values):
    """--key value pairs for `python -m gpt2`, shell-quoted; empty strings and False are left out."""
    out = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value not in ("", None, False):
            out += [flag, shlex.quote(str(value))]
    return " ".join(out)


DUMP_CFG = config["dump"]
DUMP = "resources/dumps/{}.xml.bz2".format(
    dump_name(DUMP_CFG["source"], DUMP_CFG["url"], DUMP_CFG["path"], DUMP_CFG["name"])
)
DUMP_INFO = DUMP.removesuffix(".xml.bz2") + ".json"


def dump_flags():
    d = DUMP_CFG
    return flags(source=d["source"], url=d["url"] if d["source"] == "url" else "",
                 path=d["path"] if d["source"] == "path" else "", sha1=d["sha1"], md5=d["md5"],
                 no_verify=not d["verify"], retries=d["retries"], timeout=d["timeout_s"])


def corpus_flags():
    c = config["corpus"]
    return flags(vocab_size=c["vocab_size"], limit_alphabet=c["limit_alphabet"], min_length=c["min_length"],
                 max_length=c["max_length"], split_ratio=c["split_ratio"], seed=c["seed"])
