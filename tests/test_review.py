"""The review page (python -m pipeline review) in headless Chromium, and relabel --decisions.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fds 3
and 4, NUL-separated JSON), so the test needs nothing beyond the browser. Three decisions
made on the page (two keys and a click) reach the decisions file; relabel applies them; and
`dvc diff` shows exactly those moves.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from pipeline import relabel, review
from pipeline.lib import decisions
from pipeline.lib.errors import StageError
from project import BIN

FINDINGS = "file,split,label,suggested,probability,issue,severity,value,twin,twin_split\n"


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does): cannot drive the review page")
    return found


class DevTools:
    """Chromium over the DevTools protocol on a pipe: ``call`` sends a command and returns its result."""

    def __init__(self, profile: Path):
        ours_in, its_out = os.pipe()  # it writes on its fd 4
        its_in, ours_out = os.pipe()  # it reads on its fd 3

        def fds():  # in the child: its ends to fds 3 and 4 (through copies: either may be 3 or 4 now)
            read, write = os.dup(its_in), os.dup(its_out)
            os.dup2(read, 3)
            os.dup2(write, 4)
        # close_fds=False: fds 3 and 4 must survive into the browser; every other pipe end here is
        # close-on-exec, as Python opens them
        self.proc = subprocess.Popen([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                      "--proxy-server=127.0.0.1:9"],  # offline; loopback bypasses a proxy
                                     preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(its_in), os.close(its_out)
        self.out, self.inp = os.fdopen(ours_out, "wb"), os.fdopen(ours_in, "rb")
        self.next_id, self.buffer = 0, b""

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        self.out.write(json.dumps(message).encode() + b"\0")
        self.out.flush()
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.inp.fileno(), 1 << 16)
                if not chunk:
                    raise AssertionError("chromium closed the DevTools pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def sh(cwd: Path, *cmd: str) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git + DVC repository: data/images (three classes) tracked, and the audit's reports."""
    for label, colour in (("cat", "red"), ("dog", "blue"), ("fox", "orange")):
        (tmp_path / "data/images/train" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + 8 * i, 40), colour).save(tmp_path / f"data/images/train/{label}/{label}{i}.png")
    audit = tmp_path / "reports/audit"
    audit.mkdir(parents=True)
    (audit / "label_issues.csv").write_text(FINDINGS + "train/cat/cat0.png,train,cat,dog,0.91,,,,,\n"
                                            "train/dog/dog1.png,train,dog,cat,0.62,,,,,\n"
                                            "train/fox/fox2.png,train,fox,dog,0.55,,,,,\n")
    (audit / "near_duplicates.csv").write_text(FINDINGS + "train/fox/fox0.png,train,fox,,,within a split,,0.99,"
                                               "train/fox/fox1.png,train\n")
    (audit / "outliers.csv").write_text(FINDINGS)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "add", "-q", "data/images"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        sh(tmp_path, *cmd)
    return tmp_path


def serving(repo: Path) -> tuple[review.Review, str, threading.Thread]:
    found = review.Review(repo / "reports/audit", repo / "data/images", repo / "decisions.csv")
    server, url = review.serve(found)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return found, url, server


def test_three_decisions_on_the_page_are_applied_and_dvc_diff_shows_exactly_them(repo, tmp_path):
    found, url, server = serving(repo)
    tools = DevTools(tmp_path / "profile")
    try:
        target = tools.call("Target.createTarget", url=url)["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for _ in range(300):
            try:
                if tools.evaluate(session, "document.querySelectorAll('.card > img').length == 3 && "
                                           "[...document.querySelectorAll('.card > img')].every(i => i.complete)"):
                    break
            except AssertionError:  # no page to evaluate in yet
                pass
            time.sleep(0.1)
        # Every image the page shows came from the server, whole
        assert tools.evaluate(session, "[...document.querySelectorAll('.card > img')].every(i => i.naturalWidth >= 40)")
        assert "91% sure" in tools.evaluate(session, "document.querySelector('#card-0').textContent")
        # Beside it, images of the given and the suggested class that no report flags
        shown = tools.evaluate(session, "[...document.querySelectorAll('#card-0 .examples img')].map(i => i.alt)")
        assert shown == ["train/cat/cat1.png", "train/cat/cat2.png", "train/dog/dog0.png", "train/dog/dog2.png"]
        key = "document.dispatchEvent(new KeyboardEvent('keydown', {key: '%s'}))"
        tools.evaluate(session, key % "a")  # card 0: accept dog; the page moves on to card 1
        tools.evaluate(session, key % "3")  # card 1: relabel to the third class, fox
        tools.evaluate(session, "document.querySelector('#card-2 button[data-do=quarantine]').click()")
        for _ in range(100):
            if len(found.decisions) == 3:
                break
            time.sleep(0.1)
    finally:
        tools.close()
        server.shutdown()
    made = decisions.read(repo / "decisions.csv")
    assert {f: (d["decision"], d["label"]) for f, d in made.items()} == {
        "train/cat/cat0.png": ("accept", ""), "train/dog/dog1.png": ("relabel", "fox"),
        "train/fox/fox2.png": ("quarantine", "")}

    cwd = os.getcwd()
    try:
        os.chdir(repo)
        assert relabel.main(["--decisions", "decisions.csv", "--images", "data/images", "--audit", "reports/audit"]) == 0
    finally:
        os.chdir(cwd)
    sh(repo, str(BIN / "dvc"), "add", "-q", "data/images")
    diff = {kind: [d["path"] for d in entries] for kind, entries in
            json.loads(sh(repo, str(BIN / "dvc"), "diff", "--json")).items()}
    assert sorted(diff["renamed"], key=lambda r: r["old"]) == [
        {"old": "data/images/train/cat/cat0.png", "new": "data/images/train/dog/cat0.png"},
        {"old": "data/images/train/dog/dog1.png", "new": "data/images/train/fox/dog1.png"}]
    assert diff["deleted"] == ["data/images/train/fox/fox2.png"] and not diff["added"]
    assert diff["modified"] == ["data/images/"]
    assert (repo / "data/quarantine/train/fox/fox2.png").is_file()  # kept, outside the tracked data


def test_the_server_shows_only_the_findings_images_to_its_own_page(repo):
    found, url, server = serving(repo)
    page = urllib.request.urlopen(url).read().decode()
    token = page.split('const TOKEN = "')[1].split('"')[0]

    def get(path: str, headers: dict | None = None) -> int:
        try:
            return urllib.request.urlopen(urllib.request.Request(url + path, headers=headers or {})).status
        except urllib.error.HTTPError as err:
            return err.code

    def post(body: dict, token_: str = token) -> int:
        request = urllib.request.Request(url + "decide", json.dumps(body).encode(), method="POST",
                                         headers={"X-Review-Token": token_, "Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(request).status
        except urllib.error.HTTPError as err:
            return err.code
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert get(f"image?token={token}&file=train/fox/fox1.png") == 200  # a twin
        assert get(f"image?token={token}&file=train/cat/cat1.png") == 200  # an example of its class
        assert found.examples["fox"] == []  # every fox image is a finding or a twin
        (repo / "data/images/train/fox/fox9.png").write_bytes(b"not shown")
        assert get(f"image?token={token}&file=train/fox/fox9.png") == 404  # in the data, not shown
        assert get(f"image?token={token}&file=../../decisions.csv") == 404
        assert get("image?token=wrong&file=train/cat/cat0.png") == 404
        assert get("", {"Host": "evil.example:80"}) == 403  # a rebound name
        finding = {"file": "train/cat/cat0.png", "report": "label_issues", "decision": "keep"}
        assert post(finding, "wrong") == 403
        assert post({**finding, "report": "outliers"}) == 400  # not a finding of that report
        assert post({**finding, "decision": "relabel", "label": "wolf"}) == 400
        assert post({**finding, "file": "train/fox/fox0.png", "report": "near_duplicates", "decision": "accept"}) == 400
        assert not (repo / "decisions.csv").exists()
        assert post(finding) == 200
        assert decisions.read(repo / "decisions.csv")["train/cat/cat0.png"]["decision"] == "keep"
    finally:
        server.shutdown()


def test_relabel_checks_a_decisions_file_before_moving_anything(repo):
    before = sorted(p.relative_to(repo) for p in (repo / "data/images").rglob("*.png"))
    cases = [
        ("file,report,decision,label\ntrain/cat/cat0.png,label_issues,destroy,\n", "decision 'destroy' unknown"),
        ("file,report,decision,label\ntrain/cat/cat0.png,label_issues,relabel,\n", "a label goes with"),
        ("file,report,decision,label\ntrain/cat/cat0.png,label_issues,keep,\ntrain/cat/cat0.png,label_issues,keep,\n",
         "decided twice"),
        ("file,report,decision,label\ntrain/dog/dog1.png,label_issues,accept,\n"
         "../../etc/passwd,label_issues,quarantine,\n", "outside"),
        ("file,report,decision,label\ntrain/cat/cat1.png,label_issues,accept,\n", "not a row of the CSV"),
        ("file,report,decision,label\ntrain/cat/cat0.png,label_issues,relabel,cat\n", "labelled 'cat' already"),
    ]
    cwd = os.getcwd()
    try:
        os.chdir(repo)
        for text, message in cases:
            Path("decisions.csv").write_text(text)
            with pytest.raises(StageError, match=message):
                relabel.main(["--decisions", "decisions.csv", "--images", "data/images", "--audit", "reports/audit"])
    finally:
        os.chdir(cwd)
    assert sorted(p.relative_to(repo) for p in (repo / "data/images").rglob("*.png")) == before


def test_review_never_writes_its_decisions_over_what_it_did_not_write(repo):
    """--decisions is checked before the server starts: not the model, not a folder, not inside the
    images; a decisions file it wrote before is carried on."""
    (repo / "models").mkdir()
    (repo / "models/model.keras").write_bytes(b"PK\x03\x04 a model")
    (repo / "notes.csv").write_text("file,comment\n")
    cwd = os.getcwd()
    try:
        os.chdir(repo)
        for target, message in (("models/model.keras", "not a decisions file"), ("reports", "holds reports/audit"), ("models", "folder"),
                                ("notes.csv", "not a decisions file"), ("data/images/train/decisions.csv", "inside")):
            with pytest.raises(StageError, match=message):
                review.main(["--audit", "reports/audit", "--images", "data/images", "--decisions", target])
        assert (repo / "models/model.keras").read_bytes() == b"PK\x03\x04 a model"
        decisions.write(Path("decisions.csv"), [])
        decisions.write(Path("decisions.csv"), [{"file": "a", "report": "outliers", "decision": "keep", "label": ""}])
        assert decisions.read(Path("decisions.csv"))["a"]["decision"] == "keep"
    finally:
        os.chdir(cwd)
