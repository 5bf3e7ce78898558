"""Downloads that trust nothing: HTTP(S) with range resume that never appends a wrong byte, retries
with backoff on connection errors, 429 and 5xx, an overall deadline, no https -> http redirect, capped
listings, and the size and sums checked before a file is accepted (docs/reliability.md)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3
from tqdm import tqdm

from gpt2 import UserError
from gpt2.files import file_digest
from gpt2.params import DumpParams

CHUNK = 1 << 20
MAX_LISTING_BYTES = 16 << 20  # dumpstatus.json, the sums files, a folder listing: enwiki's are < 1 MB


class IncompleteDownload(Exception):
    """The server closed the connection before the announced or listed length."""


class DeadlinePassed(Exception):
    """dump.deadline_s ran out while a file was downloading."""


class Retry(Exception):
    """A transient failure (429, 5xx, a range answer that forces a restart): try again after `wait` seconds."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


def partial_path(dest: Path) -> Path:
    """Where a download accumulates; it survives failed runs so the next one resumes."""
    return dest.parent / ".partial" / (dest.name + ".part")


def _refuse_downgrade(resp: requests.Response, *args, **kwargs) -> None:
    """A response hook: a redirect from https to anything else is refused before it is followed."""
    if resp.is_redirect and resp.url.startswith("https://"):
        target = urljoin(resp.url, resp.headers.get("Location", ""))
        if not target.startswith("https://"):
            raise UserError(f"{resp.url} redirects to {target}: a redirect from https to an unencrypted address "
                            "is refused")


def session_for(url: str) -> requests.Session:
    """A requests session that refuses https -> http redirects; plain http gets a warning in the log."""
    if url.startswith("http://"):
        print(f"warning: {url} is plain http: nothing authenticates what it sends, only the checksums "
              "guard the files", file=sys.stderr)
    session = requests.Session()
    session.hooks["response"].append(_refuse_downgrade)
    return session


def read_capped(session: requests.Session, url: str, timeout: float, label: str) -> bytes | None:
    """The body of a small file (a listing, a sums file) at `url`, at most MAX_LISTING_BYTES; None for a 404."""
    try:
        with session.get(url, stream=True, timeout=timeout) as resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise UserError(f"{label}: {url} answered HTTP {resp.status_code} {resp.reason}")
            body = resp.raw.read(MAX_LISTING_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise UserError(f"{label}: cannot read {url} ({_reason(exc)})") from None
    if len(body) > MAX_LISTING_BYTES:
        raise UserError(f"{label}: {url} is over {MAX_LISTING_BYTES >> 20} MiB, too big for a listing; "
                        "is this the dumps site?")
    return body


def _reason(exc: Exception) -> str:
    """The cause of a requests error in a few words (its text nests several exceptions)."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(certificate verify failed[^'\")]*)", text)
    return found[1].strip() if found else (type(exc).__name__ + (f": {text[:120]}" if text else ""))


def published_sums(read, filename: str) -> dict[str, str]:
    """{algorithm: hex} for `filename` from the <wiki>-<date>-{sha1,md5}sums.txt beside it; `read(name)`
    gives a file of that folder (None when missing). Only a line naming exactly `filename` counts."""
    match = re.match(r"^([a-z_]+)-(\d{8}|latest)-", filename)
    if not match:
        return {}
    sums = {}
    for algorithm, digits in (("sha1", 40), ("md5", 32)):
        body = read(f"{match[1]}-{match[2]}-{algorithm}sums.txt")
        for line in (body or b"").decode("utf-8", "replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == filename and re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", parts[0]):
                sums[algorithm] = parts[0].lower()
    return sums


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total) of `bytes FIRST-LAST/TOTAL` or `bytes */TOTAL`; None where absent."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", header.strip())
    if not match:
        return None, None
    return (int(match[1]) if match[1] else None), (int(match[2]) if match[2] != "*" else None)


def _start_over(part: Path, why: str) -> Retry:
    print(f"{why}: starting {part.name} over", file=sys.stderr)
    part.unlink(missing_ok=True)
    return Retry(why, wait=0)


def _fetch_rest(session: requests.Session, url: str, part: Path, timeout: float, size: int | None,
                deadline: float) -> int:
    """Append the missing bytes of `url` to `part`; return how many were fetched. `size` is the listed size."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        raise _start_over(part, f"the partial file has {have:,} bytes, more than the listed {size:,}")
    if size is not None and have == size:
        return 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        status = resp.status_code
        if status == 416 and have:
            _, total = _content_range(resp.headers.get("Content-Range", ""))
            if total == have:
                return 0  # nothing left to fetch: the part is already whole
            raise _start_over(part, f"the server has nothing past byte {have:,} (its size: {total}), a stale part")
        if status == 429 or status >= 500:
            raise Retry(f"HTTP {status} {resp.reason}", wait=_retry_after(resp))
        if status not in (200, 206):
            raise UserError(f"{url}: HTTP {status} {resp.reason}")
        if status == 206 and _content_range(resp.headers.get("Content-Range", ""))[0] != have:
            raise _start_over(part, f"asked from byte {have:,}, the server sent {resp.headers.get('Content-Range')}")
        if status == 200:
            have = 0  # the server ignored the range request: start over, never append
        length = resp.headers.get("Content-Length")
        total = size if size is not None else have + int(length) if length and length.isdigit() else None
        if have:
            print(f"resuming {part.name} at byte {have:,}", file=sys.stderr)
        fetched = 0
        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name, mininterval=2
        ) as bar:
            # read1 hands over whatever arrived, so a cut connection loses no
            # received bytes (iter_content drops a partly read chunk).
            for block in iter(lambda: resp.raw.read1(CHUNK), b""):
                out.write(block)
                fetched += len(block)
                bar.update(len(block))
                if time.monotonic() > deadline:
                    raise DeadlinePassed(f"{have + fetched:,} bytes so far")
        if total is not None and have + fetched < total:
            raise IncompleteDownload(f"got {have + fetched:,} of {total:,} bytes")
        return fetched


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return min(float(value), 300.0) if value.isdigit() else None


def download(url: str, dest: Path, params: DumpParams, size: int | None = None) -> Path:
    """Stream `url` into the partial file, resuming and retrying with backoff within dump.deadline_s."""
    part = partial_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + params.deadline_s
    transient = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, IncompleteDownload, Retry)
    with session_for(url) as session:
        for attempt in range(params.retries + 1):
            before = part.stat().st_size if part.exists() else 0
            try:
                fetched = _fetch_rest(session, url, part, params.timeout_s, size, deadline)
                print(f"fetched {fetched:,} bytes of {url} in attempt {attempt + 1}", file=sys.stderr)
                return part
            except DeadlinePassed as exc:
                raise UserError(f"{url}: not done within dump.deadline_s = {params.deadline_s:g} s ({exc}); "
                                "run again to resume") from None
            except transient as exc:
                got = part.stat().st_size if part.exists() else 0
                if attempt == 0 and got == before == 0 and isinstance(exc, requests.ConnectionError):
                    # DNS, refused, TLS: the address is wrong or unreachable, retrying will not help
                    raise UserError(f"cannot reach {url} ({_reason(exc)}); check the address and the network") \
                        from None
                wait = exc.wait if isinstance(exc, Retry) and exc.wait is not None else min(2.0 ** attempt, 60.0)
                if attempt == params.retries or time.monotonic() + wait > deadline:
                    raise UserError(f"{url}: download failed after {attempt + 1} attempts ({_reason(exc)}); "
                                    f"run again to resume from byte {got:,}") from None
                print(f"attempt {attempt + 1} failed ({_reason(exc)}); retrying in {wait:.0f}s", file=sys.stderr)
                time.sleep(wait)
    raise AssertionError("unreachable")


def verify(path: Path, label: str, expected: dict[str, str], size: int | None = None) -> None:
    """Compare the size and checksums; a mismatch names the file and both values."""
    if size is not None and path.stat().st_size != size:
        raise UserError(f"{label}: {path.stat().st_size:,} bytes, but the listing says {size:,}")
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want.lower():
            raise UserError(f"{label}: {algorithm} mismatch, expected {want} but the file has {got}")
        print(f"{label}: {algorithm} {got} verified", file=sys.stderr)


def download_verified(url: str, dest: Path, label: str, expected: dict[str, str], params: DumpParams,
                      size: int | None = None) -> Path:
    """The partial file of `dest`, downloaded and checked; a mismatch moves it aside so a rerun starts over."""
    part = download(url, dest, params, size)
    try:
        verify(part, label, expected, size)
    except UserError as exc:
        rejected = part.with_suffix(".rejected")
        os.replace(part, rejected)
        raise UserError(f"{exc}; the download was moved to {rejected}") from None
    return part


def require_sums(expected: dict[str, str], label: str, where: str, params: DumpParams) -> None:
    """No known sum: refused unless dump.allow_unverified says to accept a file on its size alone."""
    if expected:
        return
    if not params.allow_unverified:
        raise UserError(f"{label}: no sha1 or md5 is known for it ({where}); set dump.sha1 or dump.md5, or "
                        "dump.allow_unverified: true to accept it on its size alone")
    print(f"warning: {label}: no checksum known, accepted unverified (dump.allow_unverified)", file=sys.stderr)
