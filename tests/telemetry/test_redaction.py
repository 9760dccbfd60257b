"""No password is ever shown: every URL form, in every place a URL is shown.

The forms a fuzzing pass found printed in clear: a password holding ``/``, ``#`` or ``?``
unencoded, a password given as ``?password=``, and the password of a Redis URL or of a
URL of a scheme nothing serves. The places: errors (their message and fields), sink
names, ``repr``, and the warnings of a failing sink.
"""

from __future__ import annotations

import warnings

import pytest
from telemetry_helpers import give_up_when_unreachable, make_controller, run_request

from apportion.errors import (
    DatabaseUnavailable,
    InvalidArgument,
    StoreUnavailable,
    UnknownSink,
    UnknownStore,
)
from apportion.redaction import redact, scrub
from apportion.stores import open_store
from apportion.telemetry import TelemetryWarning, open_sinks
from apportion.telemetry.sql import open_database
from apportion.testing.ports import free_port

# Two halves each: a leak of either half is a leak.
PASSWORDS = ["Lk1/Lk2", "Lk1#Lk2", "Lk1?Lk2", "Lk1@Lk2", "Lk1:Lk2", "Lk1%2FLk2"]


def _forms(scheme: str, port: int) -> list[str]:
    path = "/0" if scheme == "redis" else "/telemetry"
    urls = [f"{scheme}://app:{pw}@127.0.0.1:{port}{path}" for pw in PASSWORDS]
    urls.append(f"{scheme}://:Lk1Lk2@127.0.0.1:{port}{path}")  # no user name
    urls.append(f"{scheme}://app@127.0.0.1:{port}{path}?sslmode=disable&password=Lk1Lk2")
    urls.append(f"{scheme}://app@127.0.0.1:{port}{path}?password=Lk1Lk2")
    return urls


def _clean(*texts: object) -> bool:
    return all("Lk1" not in str(t) and "Lk2" not in str(t) for t in texts)


@pytest.mark.parametrize("url", _forms("postgresql", 5432) + _forms("foo", 1))
def test_redact_hides_every_form(url: str) -> None:
    shown = redact(url)
    assert _clean(shown), shown
    assert "127.0.0.1" in shown  # still says where


def test_redact_keeps_what_is_no_password() -> None:
    for url in (
        "sqlite:////home/a@b/x.db",
        "postgresql://host/db?options=a:b@c",
        "redis://127.0.0.1:6379/0",
        "not a url",
    ):
        assert redact(url) == url
    assert redact("redis://user:hunter2@host/0") == "redis://user:***@host/0"


def test_scrub_hides_a_password_a_driver_quotes() -> None:
    url = "postgresql://app:Lk1/Lk2@h/db"
    text = f"could not parse {url}; password 'Lk1/Lk2' or 'Lk1%2FLk2'"
    assert _clean(scrub(text, url))


@pytest.mark.parametrize("url", _forms("postgresql", 5432))
def test_sql_sink_names(url: str) -> None:
    (sink,) = open_sinks(url)
    assert _clean(sink.name, repr(sink)), sink.name


@pytest.mark.parametrize("url", _forms("postgresql", 0)[:4] + _forms("postgresql", 0)[-2:])
def test_an_unreachable_database_error(url: str) -> None:
    url = url.replace(":0/", f":{free_port()}/")
    with pytest.raises(DatabaseUnavailable) as caught:
        open_database(url)
    assert _clean(caught.value, caught.value.fields, caught.value.reason), str(caught.value)


@pytest.mark.parametrize("url", _forms("postgresql", 0)[:3] + _forms("postgresql", 0)[-1:])
def test_a_failing_sink_warns_without_the_password(url: str) -> None:
    controller = make_controller(url.replace(":0/", f":{free_port()}/"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_request(controller)
        give_up_when_unreachable(controller)
    messages = [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]
    assert messages, "the failure was not reported"
    assert _clean(*messages), messages


@pytest.mark.parametrize("url", _forms("foo", 1) + _forms("otel", 1) + _forms("prometheus", 1))
def test_unknown_and_wrong_sink_urls(url: str) -> None:
    with pytest.raises(UnknownSink) as caught:
        open_sinks(url)
    assert _clean(caught.value, caught.value.fields), str(caught.value)


@pytest.mark.parametrize("url", _forms("foo", 1))
def test_unknown_store_urls(url: str) -> None:
    with pytest.raises(UnknownStore) as caught:
        open_store(url)
    assert _clean(caught.value, caught.value.fields), str(caught.value)


@pytest.mark.parametrize("url", _forms("redis", 0))
def test_redis_store_urls(url: str) -> None:
    pytest.importorskip("redis")
    from apportion.stores.redis import RedisStore

    url = url.replace(":0/", f":{free_port()}/")
    try:
        store = open_store(url)
    except Exception as exc:  # a URL redis-py cannot read: a clear error, still no password
        assert isinstance(exc, InvalidArgument | UnknownStore | StoreUnavailable), repr(exc)
        assert _clean(exc, exc.fields), str(exc)
        return
    assert isinstance(store, RedisStore)
    assert _clean(store.url, repr(store)), store.url
    with pytest.raises(StoreUnavailable) as caught:
        store.open("r", {"a": 0}, 100, 0.0)
    assert _clean(caught.value, caught.value.fields), str(caught.value)


def test_a_long_url_is_cut_after_its_password_is_hidden() -> None:
    url = "postgresql://app:" + "Lk1" * 400 + "@h/" + "d" * 2000
    shown = redact(url)
    assert _clean(shown) and len(shown) < 600
    text = f"cannot parse {url}"
    assert _clean(scrub(text, url)) and len(scrub(text, url)) < 600
