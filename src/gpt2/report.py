"""Stage 6: what a reader of the Snakemake report sees -- curves, tables, samples.

Every function reads finished outputs (metrics.csv, eval JSONs, the shards
manifest, benchmark TSVs, a model) and writes a figure or a table; the rules in
rules/report.smk mark them for `snakemake --report`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gpt2 import UserError  # noqa: E402
from gpt2.files import atomic_path  # noqa: E402
from gpt2.params import ReportParams, SampleParams  # noqa: E402

EMA_ALPHA = 0.1  # weight of the newest point in the smoothed curve
TAIL = 0.3  # the zoomed panel shows the last 30% of training


def read_metrics(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


def _loss_lines(ax, df: pd.DataFrame, train_y=None) -> None:
    ax.plot(df["tokens"], df["train_loss"] if train_y is None else train_y, label="train")
    evals = df.dropna(subset=["eval_loss"])
    ax.plot(evals["tokens"], evals["eval_loss"], "o-", label="eval (held-out slice)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()


def loss_figure(df: pd.DataFrame, title: str) -> Figure:
    """The four views of the reference repo's `visualize`: linear, log-x, zoomed tail, EMA-smoothed."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    (linear, logx), (tail, smooth) = axes
    _loss_lines(linear, df)
    linear.set_title("loss")
    _loss_lines(logx, df)
    logx.set_xscale("log")
    logx.set_title("loss, log-scaled tokens")
    _loss_lines(tail, df[df["tokens"] >= df["tokens"].max() * (1 - TAIL)])
    tail.set_title(f"last {TAIL:.0%} of training")
    _loss_lines(smooth, df, train_y=df["train_loss"].ewm(alpha=EMA_ALPHA).mean())
    smooth.set_title(f"train loss EMA-smoothed (alpha {EMA_ALPHA})")
    fig.suptitle(title)
    return fig


def series_figure(df: pd.DataFrame, column: str, ylabel: str, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    ax.plot(df["tokens"], df[column])
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def save(fig: Figure, path: str | Path, keep_open: bool = False) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix[1:], dpi=110)
    if not keep_open:
        plt.close(fig)


def plot_training(metrics: Path, loss: Path, lr: Path, speed: Path, model: str) -> None:
    """The loss (four views), learning-rate and throughput figures of one run's metrics.csv."""
    df = read_metrics(metrics)
    save(loss_figure(df, f"{model}: training and held-out loss"), loss)
    recipe = f" ({df['optimizer'].iloc[-1]}, {df['schedule'].iloc[-1]})" if "schedule" in df else ""
    save(series_figure(df, "lr", "learning rate", f"{model}: learning-rate schedule{recipe}"), lr)
    save(series_figure(df, "tokens_per_second", "tokens / s", f"{model}: training throughput"), speed)


def _write_table(rows: list[dict], csv: str | Path, html: str | Path, title: str) -> pd.DataFrame:
    """The rows as a table, written as CSV and as an HTML page titled `title`."""
    df = pd.DataFrame(rows)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}</style></head>"
            f"<body><h3>{title}</h3>{df.to_html(index=False, float_format=lambda v: f'{v:,.4g}')}</body></html>")
    with atomic_path(html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return df


def eval_table(reports: list[str | Path], csv: str | Path, html: str | Path) -> pd.DataFrame:
    """One row per evaluated model, perplexity beside its unigram floor."""
    rows = []
    for path in reports:
        r = json.loads(Path(path).read_text())
        rows.append({"model": r["model"], "layers": r["layers"], "heads": r["heads"], "dims": r["dims"],
                     "params (non-embedding)": r["params"]["non_embedding"], "params (total)": r["params"]["total"],
                     "train tokens": r["train_tokens"], "test tokens": r["eval_tokens"], "loss": r["loss"],
                     "perplexity": r["perplexity"], "unigram perplexity": r["unigram_perplexity"],
                     "perplexity / unigram": r["perplexity"] / r["unigram_perplexity"],
                     "bits/byte": r["bits_per_byte"], "unigram bits/byte": r["unigram_bits_per_byte"],
                     "bits/token": r["bits_per_token"], "eval tokens/s": r["tokens_per_second"]})
    return _write_table(rows, csv, html, "Evaluation on the test split")


def baselines_table(reports: list[str | Path], csv: str | Path, html: str | Path) -> pd.DataFrame:
    """Our models (eval JSONs) beside the baselines (`evaluate --hf` JSONs) on the same test bytes."""
    rows = []
    for path in reports:
        r = json.loads(Path(path).read_text())
        context = r.get("context", r["seq_len"])
        stride = r.get("stride", context)
        rows.append({"model": r["model"] + ("" if stride == context or "hf" in r else f" (stride {stride})"),
                     "source": r.get("hf", "ours"), "params (total)": r["params"]["total"],
                     "train tokens": r["train_tokens"], "context": context, "stride": stride,
                     # a window's first scored prediction sees this many tokens before it (disjoint: none)
                     "min context": 0 if stride == context else context - stride,
                     "test bytes": r["test_bytes"], "tokens/byte": r["tokens_per_byte"],
                     "loss (nats per own token)": r["loss"], "bits/byte": r["bits_per_byte"],
                     # bits per byte compare only where the tokenizer gives the text back (case, bytes)
                     "text round-trips": {True: "yes", False: "no", None: "-"}[r.get("tokenizer_round_trip")]})
    return _write_table(rows, csv, html, "Ours vs baselines: bits per byte on the same test articles")


def corpus_table(manifest: str | Path, dump_info: str | Path, csv: str | Path, html: str | Path) -> pd.DataFrame:
    m, info = json.loads(Path(manifest).read_text()), json.loads(Path(dump_info).read_text())
    rows = [{"split": name, "articles in corpus": info["articles"], "language": info["lang"], "unit": m["unit"],
             "documents": s["documents"], "lines": s["lines"], "tokens": s["tokens"], "bytes": s["bytes"],
             "<unk> tokens": s["unk_tokens"],
             "unk rate": s["unk_tokens"] / s["tokens"], "shards": len(s["shards"]), "vocab size": m["vocab_size"]}
            for name, s in m["splits"].items()]
    return _write_table(rows, csv, html, "Corpus statistics")


def audit_table(audit: str | Path, csv: str | Path, html: str | Path) -> pd.DataFrame:
    """The corpus audit (results/corpus/audit.json): one row per count, with its section's meaning."""
    a = json.loads(Path(audit).read_text(encoding="utf-8"))
    wikitext = a["bytes"].get("wikitext", 0)
    rows = [{"section": section, "what": key, "count": n,
             "% of wikitext bytes": 100 * n / wikitext if section == "removed bytes" and wikitext else None,
             "meaning": meaning if i == 0 else ""}
            for section, meaning in a["definitions"].items() for i, (key, n) in enumerate(a[section].items())]
    return _write_table(rows, csv, html, "Corpus audit: what extraction read, kept and dropped")


def downstream_table(reports: list[str | Path], csv: str | Path, html: str | Path) -> pd.DataFrame:
    """One row per model, task and metric: lm-eval's value ± stderr beside chance and the unigram baseline."""
    rows = []
    for path in reports:
        r = json.loads(Path(path).read_text())
        for task, t in r["tasks"].items():
            for metric, value in t["metrics"].items():
                rows.append({"model": r["model"], "task": task, "items": t["items"], "metric": metric, "value": value,
                             "stderr": t["stderr"].get(metric), "chance": t["chance"] if metric.startswith("acc")
                             else None, "unigram": (t["unigram"] or {}).get(metric)})
    return _write_table(rows, csv, html, "Downstream tasks (lm-evaluation-harness) on held-out articles")


def runtime_table(benchmarks: list[str | Path], csv: str | Path, html: str | Path) -> pd.DataFrame:
    """Wall time and peak memory of each rule, from Snakemake's benchmark: files."""
    rows = []
    for path in benchmarks:
        b = pd.read_csv(path, sep="\t").iloc[-1]
        name = Path(path).as_posix().split("benchmarks/", 1)[-1]  # e.g. train/small.tsv
        rows.append({"job": name.removesuffix(".tsv"), "wall seconds": b["s"], "max RSS (MB)": b["max_rss"],
                     "CPU seconds": b.get("cpu_time", float("nan"))})
    return _write_table(rows, csv, html, "Runtime of each job")


def write_samples(model_path: Path, vocab_path: Path, output: Path, params: ReportParams) -> list[str]:
    """Seeded completions of the report's fixed prompts, one paragraph each."""
    import torch

    from gpt2.checkpoint import load_model
    from gpt2.generate import complete
    from gpt2.vocab import load_tokenizer

    model, _ = load_model(model_path, torch.device("cpu"))
    tokenizer = load_tokenizer(vocab_path)
    sampling = SampleParams(max_tokens=params.sample_tokens)
    texts = [complete(model, tokenizer, p, sampling, params.seed + i) for i, p in enumerate(params.prompts)]
    with atomic_path(output) as tmp:
        tmp.write_text("".join(f"[{p}] {t}\n\n" for p, t in zip(params.prompts, texts)), encoding="utf-8")
    for text in texts:
        print(text, file=sys.stderr)
    return texts


def write_table(kind: str, inputs: list[Path], csv: Path, html: Path) -> pd.DataFrame:
    """`python -m gpt2 table KIND`: evaluation (eval JSONs), corpus (manifest + dump sidecar), audit (audit.json),
    downstream (downstream JSONs), baselines (eval and baseline JSONs), runtime (TSVs)."""
    if kind == "evaluation":
        return eval_table(inputs, csv, html)
    if kind == "audit":
        return audit_table(inputs[0], csv, html)
    if kind == "downstream":
        return downstream_table(inputs, csv, html)
    if kind == "baselines":
        return baselines_table(inputs, csv, html)
    if kind == "corpus":
        if len(inputs) != 2:
            raise UserError("table corpus takes --inputs MANIFEST DUMP_INFO")
        return corpus_table(*inputs, csv, html)
    return runtime_table(inputs, csv, html)


def visualize(model_path: Path, figure: Path, interactive: bool) -> None:
    """The four-panel loss figure of the run whose model.pt (or folder) is `model_path`; a window if asked."""
    folder = model_path if model_path.is_dir() else model_path.parent
    metrics = next((p for p in (folder / "metrics.csv", folder / "checkpoints" / "metrics.csv") if p.exists()), None)
    if metrics is None:
        raise UserError(f"no metrics.csv beside {model_path}: point --model_path at a trained model")
    fig = loss_figure(read_metrics(metrics), str(folder))
    save(fig, figure, keep_open=interactive)  # before the window, so a missing display still leaves the figure
    print(f"wrote {figure}", file=sys.stderr)
    if interactive:
        try:
            plt.switch_backend("TkAgg")
        except Exception:
            raise UserError(f"--interactive needs a display and Tk; the figure was written to {figure}") from None
        plt.show()


# Flags for headless Chromium on a machine without network (root, no GPU, no background traffic).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]


def open_in_browser(pw, chromium: str, width: int = 1400, height: int = 900):
    """(browser, page) of headless Chromium driven by Playwright, with the system's chromium binary."""
    browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    return browser, browser.new_page(viewport={"width": width, "height": height})


def screenshot_report(report: Path, out: Path, chromium: str) -> None:
    """A PNG of the report with the loss curves opened, for the README."""
    category, item = "Training curves", "loss (four views)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = open_in_browser(pw, chromium, 1280, 720)
        page.goto(Path(report).resolve().as_uri())
        page.get_by_text(category, exact=True).click()
        page.locator("tr", has_text=item).locator("a[iconname=eye]").click()
        page.wait_for_timeout(1000)
        with atomic_path(out) as tmp:
            page.screenshot(path=str(tmp), type="png")
        browser.close()
