"""Hub downloads through huggingface_hub against a local server that emulates the hub's HTTP API.

The server on 127.0.0.1 answers what snapshot_download / hf_hub_download ask for: repo info
(api/models/<repo>/revision/<rev>), the file tree (api/models/<repo>/tree/<rev>) and the files
(<repo>/resolve/<rev>/<file>, HEAD and GET with ETag, X-Repo-Commit and Content-Length).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from lepetpal_tui.policy.load import PolicyError, load_policy
from lepetpal_tui.settings import CameraSettings, ModelSettings
from lepetpal_tui.wire import ModelStatus

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_secret"
CAMS = {"front": CameraSettings()}


@dataclass
class FakeHub:
    root: Path  # files served for every known repo
    private: set[str] = field(default_factory=lambda: {"lepetpal/private-tiny"})
    public: set[str] = field(default_factory=lambda: {"lepetpal/tiny", "lepetpal/flaky"})
    drop_file: str = "model.safetensors"  # "lepetpal/flaky" cuts this one off mid-file
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def files(self) -> dict[str, bytes]:
        return {p.relative_to(self.root).as_posix(): p.read_bytes() for p in sorted(self.root.rglob("*"))
                if p.is_file()}

    def file_requests(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if "/resolve/" in r[1]]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    files = hub.files()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _repo(self, repo: str) -> bool:
            """False after answering an error, like the hub does."""
            if repo in hub.private:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, b'{"error":"Invalid username or password."}',
                               {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
                    return False
                return True
            if repo in hub.public:
                return True
            self._send(404, b'{"error":"Repository not found"}',
                       {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo = "/".join(parts[2:4])
                if not self._repo(repo):
                    return
                if parts[4] == "revision":
                    siblings = [{"rfilename": f} for f in files]
                    self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": repo in hub.private,
                                "siblings": siblings})
                    return
                if parts[4] == "tree":
                    self._json([{"type": "file", "path": f, "size": len(b),
                                 "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()])
                    return
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = "/".join(parts[:2])
                if not self._repo(repo):
                    return
                name = "/".join(parts[4:])
                if name not in files:
                    self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    return
                body = files[name]
                headers = {"ETag": f'"{hashlib.sha1(body).hexdigest()}"', "X-Repo-Commit": COMMIT,
                           "Accept-Ranges": "bytes"}
                if self.command == "GET" and repo == "lepetpal/flaky" and name == hub.drop_file:
                    # Promise the whole file, send part of it, hang up.
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and self.command == "GET" and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    self.send_response(206)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body) - start))
                    self.end_headers()
                    self.wfile.write(body[start:])
                    return
                self._send(200, body, headers)
                return
            self._send(404, b"")

    return Handler


@pytest.fixture
def hub(tiny_policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    fake = FakeHub(root=tiny_policy_dir)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # conftest turns offline mode on for the whole suite; this test talks to its own local server only.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 5)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _load(repo: str, cache: Path, statuses: list[ModelStatus]) -> object:
    model = ModelSettings(path=repo, revision="main", cache_dir=str(cache), fallback_to_scripted=False)
    return load_policy(model, CAMS, "degrees", statuses.append)


def test_download_reports_progress_then_uses_cache(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    statuses: list[ModelStatus] = []
    policy = _load("lepetpal/tiny", cache, statuses)
    assert policy.name == "smolvla"  # type: ignore[attr-defined]
    downloading = [s for s in statuses if s.phase == "downloading"]
    total = sum(len(b) for b in hub.files().values())
    assert downloading and all(s.bytes_total == total for s in downloading)
    done = [s.bytes_done for s in downloading]
    assert done == sorted(done) and done[-1] == total  # monotonic, ends complete
    assert "model.safetensors" in {s.current_file for s in downloading}
    assert any(0 < s.bytes_done < total for s in downloading)  # progress inside the transfer
    assert statuses[-1].phase == "ready" and statuses[-1].source == "lepetpal/tiny"
    gets = [p for m, p in hub.file_requests() if m == "GET"]
    # Each file fetched once (identical files share one blob: the two statistics files are identical).
    assert len(gets) == len(set(hub.files().values()))

    # Second run: served from the cache, no file requests at all.
    hub.requests.clear()
    statuses2: list[ModelStatus] = []
    _load("lepetpal/tiny", cache, statuses2)
    assert hub.file_requests() == []
    assert statuses2[-1].phase == "ready"
    last_dl = [s for s in statuses2 if s.phase == "downloading"]
    assert all(s.bytes_done == s.bytes_total == total for s in last_dl)


def test_unknown_repo_is_a_clear_404(hub: FakeHub, tmp_path: Path) -> None:
    statuses: list[ModelStatus] = []
    with pytest.raises(PolicyError) as err:
        _load("lepetpal/does-not-exist", tmp_path / "c", statuses)
    assert "no model repo named lepetpal/does-not-exist" in err.value.message and "404" in err.value.message
    assert "[model] path" in err.value.fix
    assert statuses[-1].phase == "failed" and statuses[-1].error == err.value.message


def test_private_repo_needs_a_token(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PolicyError) as err:
        _load("lepetpal/private-tiny", tmp_path / "c", [])
    assert "401" in err.value.message and "no token" in err.value.message and "HF_TOKEN" in err.value.fix
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    statuses: list[ModelStatus] = []
    _load("lepetpal/private-tiny", tmp_path / "c", statuses)
    assert statuses[-1].phase == "ready"


def test_server_dropping_mid_file(hub: FakeHub, tmp_path: Path) -> None:
    statuses: list[ModelStatus] = []
    with pytest.raises(PolicyError) as err:
        _load("lepetpal/flaky", tmp_path / "c", statuses)
    text = err.value.message + " " + err.value.fix
    assert "lepetpal/flaky" in text and "run again" in text
    assert "Traceback" not in text
    gets = [p for m, p in hub.file_requests() if m == "GET" and p.endswith("model.safetensors")]
    assert len(gets) >= 1
    assert statuses[-1].phase == "failed"


def test_offline_without_cache_says_so(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PolicyError) as err:
        _load("lepetpal/tiny", tmp_path / "c", [])
    assert "HF_HUB_OFFLINE" in err.value.message + err.value.fix
