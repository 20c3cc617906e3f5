"""The alert timeline: Prometheus' alert states polled twice a second, and the webhook's posts.

An alert is identified by its name and its labels (``severity`` aside). Each change of state
(``inactive`` -> ``pending`` -> ``firing`` -> ``inactive``) is noted with the seconds since
the test started; :func:`render` lays the states side by side with what the webhook received.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.e2e.harness import wait_for
from tests.e2e.monitoring.servers import Server, Webhook

Key = tuple[str, tuple[tuple[str, str], ...]]
#: Bound on each wait for an alert: pending (for: 5 s) + firing + Alertmanager's group wait,
#: with room for a loaded machine; a 30 s window must also drain for the ratio alerts.
ALERT_WAIT = 90


def alert_key(labels: Mapping[str, str]) -> Key:
    rest = tuple(sorted((k, v) for k, v in labels.items() if k not in {"alertname", "severity"}))
    return labels["alertname"], rest


def describe(key: Key) -> str:
    name, labels = key
    shown = ",".join(f"{k}={v}" for k, v in labels if k != "instance" and k != "job")
    return f"{name}{{{shown}}}" if shown else name


@dataclass
class Transition:
    at: float
    state: str


@dataclass
class AlertWatch:
    """Polls ``/api/v1/alerts`` in a thread until :meth:`stop`; records each state change."""

    prometheus: Server
    started: float
    history: dict[Key, list[Transition]] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def now(self) -> float:
        return time.monotonic() - self.started

    def mark(self, what: str) -> None:
        """Note a step of the test (fault injected, recovered...) on the timeline."""
        with self._lock:
            self.events.append((self.now(), what))

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                alerts = self.prometheus.get("/api/v1/alerts")["data"]["alerts"]
            except OSError:
                continue
            at = self.now()
            seen = {alert_key(a["labels"]): a["state"] for a in alerts}
            with self._lock:
                for key in seen.keys() | self.history.keys():
                    state = seen.get(key, "inactive")
                    past = self.history.setdefault(key, [])
                    if (past[-1].state if past else "inactive") != state:
                        past.append(Transition(at, state))

    def state(self, alertname: str, **labels: str) -> str:
        """The latest state of the alert named ``alertname`` whose labels include ``labels``."""
        with self._lock:
            for key, past in self.history.items():
                if key[0] == alertname and set(labels.items()) <= set(key[1]) and past:
                    return past[-1].state
        return "inactive"

    def transitions(self, alertname: str, **labels: str) -> list[Transition]:
        with self._lock:
            return [
                t
                for key, past in self.history.items()
                if key[0] == alertname and set(labels.items()) <= set(key[1])
                for t in past
            ]


def render(watch: AlertWatch, webhook: Webhook) -> str:
    """The timeline as text: test steps, then one line per alert with states and posts."""
    lines = ["alert timeline (seconds since the test started)", "  steps:"]
    lines += [f"    {at:6.1f}  {what}" for at, what in watch.events]
    lines.append("  alerts (Prometheus state -> webhook receiver: status):")
    keys = sorted(watch.history, key=lambda k: watch.history[k][0].at if watch.history[k] else 0)
    for key in keys:
        states = " ".join(f"{t.state}@{t.at:.1f}" for t in watch.history[key])
        shown: list[str] = []
        last = None
        for note in webhook.notifications:  # repeats of the same status (re-sends) once
            if alert_key(note.labels) == key and note.status != last:
                shown.append(f"{note.receiver}:{note.status}@{note.at:.1f}")
                last = note.status
        posts = " ".join(shown)
        lines.append(f"    {describe(key)}")
        lines.append(f"      prometheus: {states}")
        lines.append(f"      webhook:    {posts or '-'}")
    return "\n".join(lines)


class Alerts:
    """Waits on the alert timeline and the webhook together."""

    def __init__(self, watch: AlertWatch, webhook: Webhook) -> None:
        self.watch, self.webhook = watch, webhook

    def fire(self, name: str, since: float, **labels: str) -> float:
        """Wait until ``name`` reached the webhook firing; check it was pending first."""
        note = wait_for(
            lambda: self.webhook.received(name, "firing", since, **labels),
            ALERT_WAIT,
            f"{name} {labels or ''} to reach the webhook firing",
            0.25,
        )
        assert note is not None
        routed = f"tenantkeys-{note.labels['severity']}"  # the shipped route: by severity
        assert note.receiver == routed, (name, note.receiver)

        def states() -> list[str]:
            return [t.state for t in self.watch.transitions(name, **labels) if t.at >= since]

        # The watch polls every 0.5 s: it may note "firing" just after the webhook got it.
        wait_for(lambda: "firing" in states(), 10, f"{name} firing in Prometheus")
        seen = states()
        assert "pending" in seen and seen.index("pending") < seen.index("firing"), (name, seen)
        return note.at

    def resolve(self, name: str, since: float, **labels: str) -> float:
        """Wait until ``name`` is inactive again and the webhook received it resolved."""
        note = wait_for(
            lambda: self.webhook.received(name, "resolved", since, **labels),
            ALERT_WAIT,
            f"{name} {labels or ''} to reach the webhook resolved",
            0.25,
        )
        assert note is not None
        wait_for(lambda: self.watch.state(name, **labels) == "inactive", 10, f"{name} inactive")
        return note.at
