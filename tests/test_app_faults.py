"""The app under faulty or hostile input: bad links, Markdown in user labels, several
sessions uploading at once (AppTest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lprviz import datasets, features
from lprviz.app import caches, common, state
from lprviz.app import uploads as upload_store
from lprviz.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 600


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _cached_from(source: str) -> list:
    """Keys of every app cache entry computed from ``source``."""
    return [k for c in caches.ALL for k in c._entries if k[0] == source]


def _notices(at: AppTest) -> list[str]:
    return [e.value for e in (*at.info, *at.warning)]


@pytest.mark.parametrize("bad", ["-1", "nan", "abc", "1e999", "0", "-inf"])
def test_bad_alpha_in_link_falls_back_to_default_with_one_notice(bad):
    at = _app(alpha=bad)
    assert not at.exception and not at.error
    notices = [n for n in _notices(at) if "alpha=" in n]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert "alpha = 0.0001" in " ".join(c.value for c in at.caption)
    assert at.query_params["alpha"] == "0.0001"  # the link now carries the value in use
    at.slider(key="alpha_log10").set_value(-2.0).run()  # the page still works
    assert not at.exception and at.query_params["alpha"] == "0.01"


def test_alpha_beyond_slider_range_is_clipped_with_a_notice():
    at = _app(alpha="1e5")
    assert not at.exception and not at.error
    assert any("alpha=1e5" in n for n in _notices(at))
    assert at.query_params["alpha"] == "100"


def test_good_alpha_in_link_gives_no_notice():
    at = _app(alpha="0.01")
    assert not [n for n in _notices(at) if "alpha=" in n]
    assert at.query_params["alpha"] == "0.01"


def test_unknown_dataset_in_link_falls_back_with_escaped_notice():
    at = _app(dataset="nope![x](http://127.0.0.1:9/t.png)")
    assert not at.exception and not at.error
    (notice,) = [n for n in _notices(at) if "dataset=" in n]
    assert "![" not in notice and "](" not in notice
    assert "emt-alloys" in " ".join(c.value for c in at.caption)
    assert at.query_params["dataset"] == datasets.DEFAULT_DATASET


@pytest.mark.parametrize("raw", [None, "1e-4", "100", "1e-8"])
def test_link_alpha_accepts_values_in_range(raw):
    log10, notice = state.link_alpha_log10(raw)
    assert notice is None
    assert state.ALPHA_LOG10_RANGE[0] <= log10 <= state.ALPHA_LOG10_RANGE[1]


# --------------------------------------------------------------------------- Markdown injection

PAYLOAD_URL = "http://127.0.0.1:9/t.png"
HOSTILE_FILE = f"![x]({PAYLOAD_URL}).xyz"


def payloads(url: str = PAYLOAD_URL) -> tuple[str, str, str]:
    """A Markdown image, an HTML image and a Markdown link, all pointing at ``url``."""
    return f"![n]({url})", f'<img src="{url}">', f"[link]({url})"


PAYLOADS = payloads()
PAGES = ["explore", "training_set", "compare", "improve", "validate", "export"]
# Fields of element protos that Streamlit renders as Markdown.
MARKDOWN_FIELDS = {"body", "label", "help", "caption", "placeholder"}


def hostile_extxyz(n_frames: int = 10, url: str = PAYLOAD_URL) -> bytes:
    """Frames of the default dataset renamed and regrouped with Markdown/HTML payloads
    pointing at ``url``."""
    import io

    import ase.io

    from lprviz import datasets

    ds = datasets.load(datasets.DEFAULT_DATASET)
    bulk = [i for i, g in enumerate(ds.groups) if str(g).startswith("bulk")][:n_frames // 2]
    other = [i for i, g in enumerate(ds.groups) if not str(g).startswith("bulk")]
    frames = []
    for k, i in enumerate(bulk + other[: n_frames - len(bulk)]):
        atoms = ds.frames[i].copy()
        atoms.calc = ds.frames[i].calc
        atoms.info["name"] = f"{payloads(url)[k % 3]}#{k}"
        atoms.info["group"] = "bulk-pure" if i in bulk else payloads(url)[k % 2]
        frames.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


def _nodes(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def _markdown_strings(at: AppTest) -> list[str]:
    """Every string of the page that Streamlit renders as Markdown."""
    from google.protobuf.json_format import MessageToDict

    def collect(obj, out, key=None):
        if isinstance(obj, dict):
            for k, v in obj.items():
                collect(v, out, k)
        elif isinstance(obj, list):
            for v in obj:
                collect(v, out, key)
        elif isinstance(obj, str) and key in MARKDOWN_FIELDS:
            out.append(obj)

    out: list[str] = []
    for root in (at.main, at.sidebar):
        for node in _nodes(root):
            proto = getattr(node, "proto", None)
            if proto is None or node.type in ("plotly_chart", "arrow_data_frame", "iframe"):
                continue
            collect(MessageToDict(proto), out)
            if node.type == "radio":  # radio options are Markdown too
                out.extend(node.options)
    return out


def unescaped_markup(text: str) -> list[str]:
    """Markdown image/link or HTML tag openings left unescaped in ``text``."""
    import re

    bare = re.sub(r"\\.", "", text)  # drop escaped characters
    return [m for m in ("![", "](", "<img", "<a ") if m in bare]


@pytest.fixture(scope="module")
def hostile_app() -> AppTest:
    at = _app()
    at.file_uploader(key="upload").set_value(
        (HOSTILE_FILE, hostile_extxyz(), "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("page", PAGES)
def test_markdown_payloads_in_names_are_escaped_on_every_page(hostile_app, page):
    at = hostile_app
    at.switch_page(f"lprviz/app/pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["dataset_label"] == HOSTILE_FILE
    texts = _markdown_strings(at)
    assert texts, "the page rendered no Markdown at all"
    bad = {t: unescaped_markup(t) for t in texts if unescaped_markup(t)}
    assert not bad
    if page in ("explore", "export"):
        # The file name is shown, escaped, where the dataset is named.
        assert any("t.png" in t for t in texts)


def test_escaping_check_sees_raw_payloads():
    """The check above would catch each payload left raw (guards against a vacuous test)."""
    assert all(unescaped_markup(p) for p in (*PAYLOADS, HOSTILE_FILE))
    assert not any(unescaped_markup(common.plain_text(p)) for p in (*PAYLOADS, HOSTILE_FILE))


@pytest.mark.parametrize("label", [HOSTILE_FILE, "../../etc/passwd", "a b/c\\d:e", "", "..."])
def test_download_file_stem_keeps_only_safe_characters(label):
    import re

    stem = common.file_stem(f"lprviz-{label}")
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}", stem)
    assert not stem.startswith(".")


# --------------------------------------------------------------------------- sessions


def _xyz(i: int) -> bytes:
    header = f"Properties=species:S:1:pos:R:3 energy={-1.0 - i}"
    return f"2\n{header}\nCu 0 0 0\nCu 0 0 {2.5 + i}\n".encode()


@pytest.fixture()
def uploads(tmp_path, monkeypatch):
    """A fresh upload root; every session alive unless listed in the returned set."""
    monkeypatch.setattr(upload_store, "UPLOAD_DIR", tmp_path / "uploads")
    monkeypatch.setattr(upload_store, "UPLOADS_PER_SESSION", 3)
    monkeypatch.setenv("LPRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(upload_store, "_dead_since", {})
    closed: set[str] = set()
    monkeypatch.setattr(upload_store, "session_alive", lambda sid: sid not in closed)
    return closed


def _close(closed: set[str], sid: str, monkeypatch) -> None:
    """Session ``sid`` disconnected longer ago than the reconnection window."""
    closed.add(sid)
    upload_store.prune_uploads()  # first seen disconnected
    monkeypatch.setattr(upload_store, "reconnect_grace", lambda: 0.0)


def test_a_live_sessions_uploads_are_never_evicted_by_another(uploads):
    a = [Path(upload_store.save_upload(f"a{i}.xyz", _xyz(i), session="A")) for i in range(2)]
    b = [Path(upload_store.save_upload(f"b{i}.xyz", _xyz(10 + i), session="B")) for i in range(6)]
    assert all(p.exists() for p in a)  # B filled its own share many times over
    assert [p.exists() for p in b] == [False] * 3 + [True] * 3  # B's own oldest went first


def test_a_session_is_bounded_in_bytes(uploads, monkeypatch):
    monkeypatch.setattr(upload_store, "UPLOAD_SESSION_BYTES", 2 * len(_xyz(0)) + 2)
    first, second, third = (Path(upload_store.save_upload(f"f{i}.xyz", _xyz(i), session="A"))
                            for i in range(3))
    assert not first.exists() and second.exists() and third.exists()
    with pytest.raises(InputError, match="more than") as info:
        upload_store.save_upload("big.xyz", b"x" * 10_000, session="A")
    assert "\n" not in str(info.value)


def test_full_upload_space_refuses_without_touching_live_sessions(uploads, monkeypatch):
    monkeypatch.setattr(upload_store, "UPLOAD_TOTAL_BYTES", 3 * len(_xyz(0)))
    a = [Path(upload_store.save_upload(f"a{i}.xyz", _xyz(i), session="A")) for i in range(3)]
    with pytest.raises(InputError, match="upload space") as info:
        upload_store.save_upload("b.xyz", _xyz(5), session="B")
    assert "\n" not in str(info.value) and str(upload_store.UPLOAD_DIR) not in str(info.value)
    assert all(p.exists() for p in a)
    # Once A's session has closed, its files make room.
    _close(uploads, "A", monkeypatch)
    assert Path(upload_store.save_upload("b.xyz", _xyz(5), session="B")).exists()
    assert not (upload_store.UPLOAD_DIR / "A").exists()


def test_closed_sessions_uploads_and_cached_results_are_released(uploads, monkeypatch):
    from lprviz.pipeline import ModelSpec

    loads: list[str] = []
    real_load = datasets.load

    def counting_load(source, **kwargs):
        loads.append(source)
        return real_load(source, **kwargs)

    monkeypatch.setattr(datasets, "load", counting_load)
    path_a = upload_store.save_upload("mine.xyz", _xyz(1), session="A")
    path_b = upload_store.save_upload("yours.xyz", _xyz(2), session="B")
    args = ("fast", (0,), ModelSpec(kind="linear"), None, 1e-4)
    for path in (path_a, path_b):
        assert caches.results(path, *args).lpr.shape == (2,)
    caches.results(path_a, *args)
    assert loads == [path_a, path_b]  # cached
    assert _cached_from(path_a)

    uploads.add("A")
    assert upload_store.prune_uploads() == 0  # just disconnected: may still reconnect
    assert Path(path_a).exists()
    _close(uploads, "A", monkeypatch)
    assert upload_store.prune_uploads() == len(_xyz(1))
    assert not (upload_store.UPLOAD_DIR / "A").exists() and Path(path_b).exists()
    assert not _cached_from(path_a)
    # Nothing of A is cached any more: its results need its (deleted) file again. B's are
    # still cached.
    with pytest.raises(InputError):
        caches.results(path_a, *args)
    caches.results(path_b, *args)
    assert loads == [path_a, path_b, path_a]
    # Uploads stay out of the shared descriptor caches (they would outlive the session).
    assert not list(features.cache_dir().glob("*.npz"))


def test_lost_upload_error_names_the_users_file_not_the_server_path():
    at = _app()
    at.file_uploader(key="upload").set_value(("my data.xyz", _xyz(3), "text/plain")).run()
    assert not at.exception and not at.error
    stored = at.session_state["uploads"]["my data.xyz"]
    # The file disappears behind the session's back (an operator cleaning /tmp).
    Path(stored).unlink()
    upload_store.release_upload(stored)
    at.run()
    assert not at.exception and not at.error
    text = " ".join(_notices(at))
    assert "my data.xyz" in text and "upload it again" in text
    assert str(Path(stored).parent) not in text and Path(stored).name not in text
    # The session goes on with a dataset that exists.
    assert at.session_state["dataset_label"] == datasets.DEFAULT_DATASET
    assert "emt-alloys" in " ".join(c.value for c in at.caption)


def test_reader_errors_about_an_upload_name_the_users_file():
    at = _app()
    at.file_uploader(key="upload").set_value(
        ("broken![x](http://a/b.png).xyz", b"3\n\nCu 0 0 nan\n", "text/plain")).run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("broken") and "b.png" in error and not unescaped_markup(error)
    assert upload_store.UPLOAD_DIR is not None and str(upload_store.UPLOAD_DIR) not in error
    assert not [p for p in upload_store.UPLOAD_DIR.rglob("*") if p.is_file()
                and p.read_bytes().startswith(b"3\n\nCu 0 0 nan")]  # the bad file is gone
