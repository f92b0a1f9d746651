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


@pytest.mark.parametrize(
    "kind, message",
    [
        ("a folder", "is a folder, not a database file"),
        ("not a database", "is not an SQLite database"),
        ("file store", "is a file store, which MLflow no longer supports"),
    ],
)
def test_a_store_that_cannot_work_is_one_line_with_the_fix_before_data_loads(
    tiny_cfg, tmp_path, monkeypatch, kind, message
):
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


def _half_made_mlflow_store(path) -> None:
    """What a process killed in MLflow's migrations leaves: the initial tables, no alembic revision."""
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
    from mlflow.store.tracking.dbmodels.initial_models import Base

    engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()


def test_a_store_whose_creator_was_killed_mid_way_is_made_again_whole(tmp_path):
    """A SIGKILL while a new store's tables were being made used to leave a half-made file that every later start
    refused (chaos, a kill in the first seconds of a sweep). The tables are now made aside, then moved in."""
    from ftsweep.locks import create_aside
    from ftsweep.tracking import open_client

    db = tmp_path / "mlflow.db"
    _half_made_mlflow_store(db.with_name("mlflow.db.new-999-deadbeef"))  # the killed creator's file

    def killed(url: str) -> None:
        _half_made_mlflow_store(url[len("sqlite:///") :])
        raise KeyboardInterrupt  # the kill, after some tables were written

    with pytest.raises(KeyboardInterrupt):
        create_aside(db, killed)
    assert not db.exists() and not list(tmp_path.glob("mlflow.db.new-*"))  # nothing half-made at the real path

    _half_made_mlflow_store(db.with_name("mlflow.db.new-999-deadbeef"))
    client = open_client(f"sqlite:///{db}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not list(tmp_path.glob("mlflow.db.new-*"))  # the killed creator's leftovers are gone
