"""The tracking store: a store that cannot work is one line naming it and the fix, before any data loads;
passwords never reach MLflow."""

import http.server
import threading

import pytest

from ftsweep.errors import FtsweepError
from ftsweep.tracking import Tracker, redact
from ftsweep.train import train
from tests.conftest import broken_store, run_statuses

FIX = "set MLFLOW_TRACKING_URI to sqlite:///path/to/mlflow.db or an http:// MLflow server"


@pytest.mark.parametrize("kind, message", [
    ("a folder", "is a folder, not a database file"),
    ("not a database", "is not an SQLite database"),
    ("file store", "is a file store, which MLflow no longer supports"),
])
def test_a_store_that_cannot_work_is_one_line_with_the_fix_before_data_loads(tiny_cfg, tmp_path, monkeypatch,
                                                                              kind, message):
    uri = broken_store(kind, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # The data file does not exist either: the store is checked first, so that is not what the user hears.
    with pytest.raises(FtsweepError) as info:
        train(tiny_cfg("max_steps=1", "data.train_file=/nope.csv"))
    assert str(info.value).startswith(f"MLflow tracking store {uri}") and message in str(info.value)
    assert FIX in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def not_mlflow():
    """An HTTP server on loopback that answers every request with an HTML error page, as a web server would."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_http_server_that_is_not_mlflow_is_one_line_without_its_page(not_mlflow):
    with pytest.raises(FtsweepError) as info:
        Tracker(not_mlflow)
    message = str(info.value)
    assert message.startswith(f"MLflow tracking store {not_mlflow} is not usable: ")
    assert "<" not in message and "\n" not in message


def test_a_new_store_is_created_beside_its_creation_lock(tmp_path):
    """The lock itself is proven by processes racing on a new store (test_reliability.py, row 22)."""
    uri = f"sqlite:///{tmp_path / 'sub' / 'new.db'}"
    tracker = Tracker(uri)
    tracker.start("exp", "run", tags={})
    tracker.end()
    assert (tmp_path / "sub" / "new.db.mlflow-init-lock").exists()  # the lock that serialises creation
    assert run_statuses(uri) == ["FINISHED"]


def test_redact_hides_every_password_in_a_text():
    text = "a postgresql://ml:s3cret@db/x and mysql+pymysql://u:p%40ss@h:3306/y, sqlite:///no/password.db"
    assert redact(text) == "a postgresql://ml:***@db/x and mysql+pymysql://u:***@h:3306/y, sqlite:///no/password.db"
