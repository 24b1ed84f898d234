"""Prometheus metrics and the `/metrics` + `/healthz` endpoint (PONDER_METRICS_PORT, on
PONDER_METRICS_HOST)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

CHAINS_STARTED = Counter("ponder_chains_started_total", "Chains started",
                         ["platform"], registry=REGISTRY)
CHAINS_FINISHED = Counter("ponder_chains_finished_total",
                          "Chains finished, by outcome (answered or a failure reason)",
                          ["platform", "outcome"], registry=REGISTRY)
CHAINS_RUNNING = Gauge("ponder_chains_running", "Chains running now", registry=REGISTRY)
QUEUED = Gauge("ponder_queue_length", "Questions waiting for the model server to come back",
               registry=REGISTRY)
REFUSED = Counter("ponder_questions_refused_total", "Questions refused by a limit",
                  ["platform"], registry=REGISTRY)
STEP_SECONDS = Histogram("ponder_step_seconds", "Seconds per reasoning step", registry=REGISTRY,
                         buckets=(0.5, 1, 2, 4, 8, 15, 30, 60, 120))
MODEL_CALL_SECONDS = Histogram("ponder_model_call_seconds", "Seconds per model request attempt",
                               ["outcome"], registry=REGISTRY,
                               buckets=(0.1, 0.5, 1, 2, 4, 8, 15, 30, 60, 120))
PLATFORM_CALLS = Counter("ponder_platform_api_calls_total", "Platform API calls",
                         ["platform", "method"], registry=REGISTRY)
PLATFORM_429 = Counter("ponder_platform_rate_limited_total", "Platform 429 answers",
                       ["platform"], registry=REGISTRY)
UNDELIVERED = Counter("ponder_undelivered_total",
                      "Answers the platform never took within PONDER_DELIVERY_HOURS",
                      ["platform"], registry=REGISTRY)
OWED = Gauge("ponder_deliveries_owed", "Chains whose final texts the platform has not taken yet",
             registry=REGISTRY)
FEEDBACK = Counter("ponder_feedback_total",
                   "Votes on answers as they were cast: a first vote counts for its side, a "
                   "changed one for its new side, the same vote again not at all",
                   ["platform", "vote"], registry=REGISTRY)
MODEL_UP = Gauge("ponder_model_server_up", "1 when the model server answers", registry=REGISTRY)


async def start_metrics_server(port: int, healthy: Callable[[], bool],
                               host: str = "127.0.0.1") -> web.AppRunner:
    """Serve /metrics and /healthz on `host` (PONDER_METRICS_HOST); the caller owns the
    returned runner (cleanup on exit)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
