"""Review the audit's findings in a browser: ``python -m pipeline review [--port N]``.

Serves one page on the loopback address (127.0.0.1 only) over the audit's reports
(reports/audit/<issue>.csv, worst first by issue type): each image large enough to judge, its
given and suggested labels, its twin for a near duplicate, and one click (or key) to accept
the suggestion, pick another label, quarantine it, or keep it as it is. Every decision is
written at once to the decisions file (``--decisions``, default ``decisions.csv``), which
``python -m pipeline relabel --decisions decisions.csv`` applies with relabel's own checks;
then ``dvc add data/images`` and a data diff to review.

The server shows only the images the reports name, read from the images folder (ingest's
``--source`` in dvc.yaml), and answers only requests addressed to it by its loopback name
that carry the page's token, so another web page open in the same browser can neither read
the images nor make decisions.
"""
from __future__ import annotations

import argparse
import html
import http.server
import json
import mimetypes
import os
import secrets
import sys
import threading
import urllib.parse
from pathlib import Path

from PIL import Image

from pipeline.lib import artifacts, cli, decisions, dvcyaml, params, sources
from pipeline.lib.errors import StageError
from pipeline.lib.schemas import read_csv

HOST = "127.0.0.1"
EXAMPLES = 4  # images of each class shown beside a finding
PAGE = Path(__file__).with_name("review.html")


class Review:
    """The findings, the images they name, and the decisions made so far (kept in ``decisions``)."""

    def __init__(self, audit: Path, images: Path, decisions_file: Path):
        self.audit, self.images, self.decisions_file = audit, images, decisions_file
        self.root = images.resolve()
        self.classes = sorted(folder.name for _, folder in sources.class_folders(self.root))
        self.findings: dict[str, list[dict]] = {}
        for name in decisions.REPORTS:
            path = audit / f"{name}.csv"
            if path.is_file():
                self.findings[name] = [{k: r.get(k, "") for k in ("file", "split", "label", "suggested",
                                                                    "probability", "issue", "value", "twin")}
                                       for r in read_csv(path)]
        if not self.findings:
            raise StageError(f"{audit}: no audit reports ({', '.join(f'{n}.csv' for n in decisions.REPORTS)}); "
                             "run `dvc repro audit` first")
        flagged = {f[k] for rows in self.findings.values() for f in rows for k in ("file", "twin") if f[k]}
        self.examples = examples(self.root, flagged)
        self.shown = flagged | {name for names in self.examples.values() for name in names}
        self.decisions = decisions.read(decisions_file) if decisions_file.exists() else {}
        for line, row in enumerate(self.decisions.values(), start=2):
            if problem := self.problem(row["file"], row["report"], row["decision"], row["label"]):
                raise StageError(f"{decisions_file} line {line}: {problem}")
        self.lock = threading.Lock()

    def image(self, name: str) -> Path | None:
        """The file of an image a report names, inside the images folder; else None."""
        if name not in self.shown:
            return None
        path = (self.root / name).resolve()
        return path if path.is_relative_to(self.root) and path.is_file() else None

    def decide(self, file: str, report: str, decision: str, label: str = "") -> dict:
        """Record one decision (a later one for the same file replaces it) and write the file."""
        problem = self.problem(file, report, decision, label)
        if problem:
            raise ValueError(problem)
        with self.lock:
            self.decisions[file] = {"file": file, "report": report, "decision": decision,
                                    "label": label if decision == "relabel" else ""}
            decisions.write(self.decisions_file, self.decisions.values())
            return dict(self.counts())

    def problem(self, file: str, report: str, decision: str, label: str) -> str | None:
        if report not in self.findings or file not in {f["file"] for f in self.findings[report]}:
            return f"{file!r} is not a finding of {report!r}"
        if decision not in decisions.DECISIONS:
            return f"decision {decision!r}: one of {', '.join(decisions.DECISIONS)}"
        if decision == "accept" and not next(f for f in self.findings[report] if f["file"] == file)["suggested"]:
            return f"{file}: its row suggests no label to accept"
        if decision == "relabel" and label not in self.classes:
            return f"label {label!r} is not one of the data's classes"
        return None

    def counts(self) -> dict:
        out = {d: 0 for d in decisions.DECISIONS}
        for d in self.decisions.values():
            out[d["decision"]] += 1
        return out

    def data(self) -> dict:
        return {"reports": self.findings, "classes": self.classes, "examples": self.examples, "decisions": self.decisions,
                "decisions_file": str(self.decisions_file), "images": str(self.images)}


def examples(root: Path, flagged: set[str], per_class: int = EXAMPLES) -> dict[str, list[str]]:
    """A few images of each class that no report flags (training folders first, then the first by
    name), to compare a finding with: what the given and the suggested class look like."""
    extensions = set(Image.registered_extensions())
    out: dict[str, list[str]] = {}
    for split, folder in sorted(sources.class_folders(root), key=lambda sf: sf[0] not in ("train", "")):
        names = out.setdefault(folder.name, [])
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if len(names) >= per_class:
                break
            name = Path(entry.path).relative_to(root).as_posix()
            if entry.is_file() and Path(entry.name).suffix.lower() in extensions and name not in flagged:
                names.append(name)
    return out


def handler(review: Review, token: str, port_of) -> type:
    page = PAGE.read_text(encoding="utf-8")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the terminal shows the URL and the decisions
            pass

        def addressed_to_us(self) -> bool:
            # A page elsewhere could point a name it controls at 127.0.0.1 (DNS rebinding)
            return self.headers.get("Host") in (f"{HOST}:{port_of()}", f"localhost:{port_of()}")

        def send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if not self.addressed_to_us():
                return self.send(403, b"forbidden", "text/plain")
            if url.path == "/":
                data = json.dumps(review.data()).replace("</", "<\\/")
                body = page.replace("{{TOKEN}}", html.escape(token)).replace("{{DATA}}", data)
                return self.send(200, body.encode(), "text/html; charset=utf-8")
            if url.path == "/image" and query.get("token") == [token]:
                path = review.image(query.get("file", [""])[0])
                if path is None:
                    return self.send(404, b"not a finding's image", "text/plain")
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                return self.send(200, path.read_bytes(), kind if kind.startswith("image/") else "application/octet-stream")
            self.send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            if not self.addressed_to_us() or self.headers.get("X-Review-Token") != token or \
                    urllib.parse.urlsplit(self.path).path != "/decide":
                return self.send(403, b"forbidden", "text/plain")
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= 10_000:
                    raise ValueError("a decision is a small JSON object")
                body = json.loads(self.rfile.read(length))
                counts = review.decide(str(body.get("file", "")), str(body.get("report", "")),
                                       str(body.get("decision", "")), str(body.get("label", "")))
            except (ValueError, TypeError, AttributeError) as err:
                return self.send(400, json.dumps({"error": str(err)}).encode(), "application/json")
            print(f"{body['decision']:10s} {body['file']}" + (f" -> {body['label']}" if body.get("label") else ""),
                  flush=True)
            self.send(200, json.dumps(counts).encode(), "application/json")

    return Handler


def serve(review: Review, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """The server (not yet serving: call ``serve_forever``) and the page's URL."""
    token = secrets.token_urlsafe(24)
    holder: list = []
    server = http.server.ThreadingHTTPServer((HOST, port), handler(review, token, lambda: holder[0]))
    holder.append(server.server_address[1])
    return server, f"http://{HOST}:{server.server_address[1]}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audit", type=Path, help="the audit's reports folder (default: the audit stage's --out in dvc.yaml)")
    parser.add_argument("--images", type=Path, help="the images folder (default: ingest's --source in dvc.yaml)")
    parser.add_argument("--decisions", type=Path, default=Path("decisions.csv"),
                        help="where decisions go (default decisions.csv); kept and extended if it exists")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    images = args.images or Path(dvcyaml.source())
    audit = args.audit or Path(dvcyaml.argument("audit", "--out"))
    if Path(params.PARAMS_FILE).is_file() and params.load(["task"]).task == "multi_label":
        raise StageError("review is for single-label class folders; with task: multi_label edit labels with "
                         "`python -m pipeline relabel --add/--remove FILE LABEL` (docs/multilabel.md)")
    if not images.is_dir():
        raise StageError(f"{images} is not a folder of class folders (an archive source cannot be relabelled)")
    # Never over what review did not write (the model, a folder), nor inside the tracked images
    artifacts.check_output(args.decisions, folder=False, kind=decisions.KIND, reads=[images, audit],
                           flag="--decisions")
    review = Review(audit, images, args.decisions)
    server, url = serve(review, args.port)
    total = sum(len(rows) for rows in review.findings.values())
    print(f"reviewing {total} findings of {audit} at {url} (Ctrl-C to stop); decisions go to {args.decisions}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    counts = review.counts()
    print(f"{sum(counts.values())} decision(s) in {args.decisions}: "
          + ", ".join(f"{n} {d}" for d, n in counts.items())
          + f". Next: `python -m pipeline relabel --decisions {args.decisions}`, `dvc add {images}`, `dvc diff`.")
    return 0


if __name__ == "__main__":
    cli.run(lambda: sys.exit(main()))
