"""Request metrics of the server, exposed at GET /metrics in Prometheus' text format (0.0.4).

    lmforge_requests_total{endpoint,finish_reason}        requests answered, by their (first) finish reason
    lmforge_prompt_tokens_total{endpoint}                  prompt tokens read
    lmforge_completion_tokens_total{endpoint}              tokens generated
    lmforge_request_seconds{endpoint} (histogram)          wall time from an admitted request to its last token
    lmforge_moderation_checks_total{stage}, lmforge_moderation_refusals_total{stage}
    lmforge_running_sequences, lmforge_capacity_sequences  (gauges, read when scraped)
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

__all__ = ["BUCKETS", "ServeMetrics", "timing"]

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def timing(seconds: float, completion_tokens: int) -> dict[str, float]:
    """What the usage object of a response adds: its wall time and generation rate."""
    return {"time_s": round(seconds, 4),
            "completion_tokens_per_s": round(completion_tokens / seconds, 2) if seconds > 0 else 0.0}


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class ServeMetrics:
    """Thread-safe counters and one latency histogram per endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.completion_tokens: dict[str, int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.seconds_sum: dict[str, float] = defaultdict(float)
        self.seconds_count: dict[str, int] = defaultdict(int)

    def observe(self, endpoint: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, finish_reason)] += 1
            self.prompt_tokens[endpoint] += prompt_tokens
            self.completion_tokens[endpoint] += completion_tokens
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[endpoint][index] += 1
            self.seconds_sum[endpoint] += seconds
            self.seconds_count[endpoint] += 1

    def render(self, gauges: dict[str, float] | None = None, moderation: Any = None) -> str:
        """The exposition text; `moderation` is a Moderator (its check and refusal counts)."""
        lines: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])

        with self._lock:
            family("lmforge_requests_total", "counter", "Requests answered, by endpoint and finish reason.")
            lines += [f"lmforge_requests_total{_labels(endpoint=e, finish_reason=r)} {n}"
                      for (e, r), n in sorted(self.requests.items())]
            family("lmforge_prompt_tokens_total", "counter", "Prompt tokens read.")
            lines += [f"lmforge_prompt_tokens_total{_labels(endpoint=e)} {n}" for e, n in sorted(self.prompt_tokens.items())]
            family("lmforge_completion_tokens_total", "counter", "Tokens generated.")
            lines += [f"lmforge_completion_tokens_total{_labels(endpoint=e)} {n}"
                      for e, n in sorted(self.completion_tokens.items())]
            family("lmforge_request_seconds", "histogram", "Wall time of a request from admission to its last token.")
            for endpoint in sorted(self.seconds_count):
                for bound, count in zip(BUCKETS, self.buckets[endpoint]):
                    lines.append(f"lmforge_request_seconds_bucket{_labels(endpoint=endpoint, le=repr(bound))} {count}")
                lines.append(f"lmforge_request_seconds_bucket{_labels(endpoint=endpoint, le='+Inf')} "
                             f"{self.seconds_count[endpoint]}")
                lines.append(f"lmforge_request_seconds_sum{_labels(endpoint=endpoint)} {self.seconds_sum[endpoint]:.6f}")
                lines.append(f"lmforge_request_seconds_count{_labels(endpoint=endpoint)} {self.seconds_count[endpoint]}")
        if moderation is not None:
            family("lmforge_moderation_checks_total", "counter", "Texts checked by the moderation policy.")
            lines += [f"lmforge_moderation_checks_total{_labels(stage=s)} {n}" for s, n in moderation.counts.checked.items()]
            family("lmforge_moderation_refusals_total", "counter", "Texts the moderation policy refused.")
            lines += [f"lmforge_moderation_refusals_total{_labels(stage=s)} {n}" for s, n in moderation.counts.refused.items()]
        for name, value in (gauges or {}).items():
            family(name, "gauge", name.replace("_", " ") + ".")
            lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"
