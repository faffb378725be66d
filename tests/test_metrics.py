"""EngineMetrics: each engine's Prometheus series on a registry of its own, rendered in the text format."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics import LATENCY_BUCKETS, EngineMetrics

P = "sglang_dsl_"


def families(metrics: EngineMetrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def test_every_series_is_exposed_before_anything_happens():
    found = families(EngineMetrics())
    for name, kind in [
        ("prompt_tokens", "counter"), ("generation_tokens", "counter"), ("cached_tokens", "counter"),
        ("requests", "counter"), ("num_running_requests", "gauge"), ("num_queued_requests", "gauge"),
        ("kv_cache_usage", "gauge"), ("cache_hit_rate", "gauge"), ("time_to_first_token_seconds", "histogram"),
        ("inter_token_latency_seconds", "histogram"), ("e2e_request_latency_seconds", "histogram"),
        ("constraint_mask_seconds", "histogram"),
    ]:
        assert found[P + name].type == kind, name


def test_finished_requests_move_the_counters_by_finish_reason():
    m = EngineMetrics()
    m.request_finished(prompt_tokens=10, completion_tokens=4, cached_tokens=6, finish_type="stop", e2e_seconds=0.2)
    m.request_finished(prompt_tokens=5, completion_tokens=8, cached_tokens=0, finish_type="length", e2e_seconds=1.5)
    m.request_finished(prompt_tokens=3, completion_tokens=0, cached_tokens=3, finish_type="stop", e2e_seconds=0.01)
    assert m.value(P + "prompt_tokens_total") == 18
    assert m.value(P + "generation_tokens_total") == 12
    assert m.value(P + "cached_tokens_total") == 9
    assert m.value(P + "requests_total", {"finish_reason": "stop"}) == 2
    assert m.value(P + "requests_total", {"finish_reason": "length"}) == 1
    assert m.value(P + "requests_total", {"finish_reason": "abort"}) is None
    assert m.value(P + "e2e_request_latency_seconds_count") == 3
    assert m.value(P + "e2e_request_latency_seconds_sum") == 0.2 + 1.5 + 0.01
    assert m.value(P + "e2e_request_latency_seconds_bucket", {"le": "0.25"}) == 2
    assert m.value(P + "e2e_request_latency_seconds_bucket", {"le": "+Inf"}) == 3


def test_latency_histograms_span_a_millisecond_to_a_minute():
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    m = EngineMetrics()
    m.first_token(0.0004)
    m.first_token(0.03)
    m.inter_token(0.004)
    m.inter_token(90.0)
    assert m.value(P + "time_to_first_token_seconds_bucket", {"le": "0.001"}) == 1
    assert m.value(P + "time_to_first_token_seconds_count") == 2
    assert m.value(P + "inter_token_latency_seconds_bucket", {"le": "0.005"}) == 1
    assert m.value(P + "inter_token_latency_seconds_bucket", {"le": "60.0"}) == 1  # 90 s only in +Inf
    assert m.value(P + "inter_token_latency_seconds_count") == 2


def test_state_gauges_hold_the_latest_values_with_ratios_clamped():
    m = EngineMetrics()
    m.update_state(running=3, queued=7, kv_usage=0.25, cache_hit_rate=0.5)
    m.update_state(running=2, queued=0, kv_usage=1.2, cache_hit_rate=-0.1)
    assert m.value(P + "num_running_requests") == 2
    assert m.value(P + "num_queued_requests") == 0
    assert m.value(P + "kv_cache_usage") == 1.0
    assert m.value(P + "cache_hit_rate") == 0.0


def test_engines_do_not_share_series():
    a, b = EngineMetrics(), EngineMetrics()
    a.request_finished(1, 1, 0, "stop", 0.1)
    assert a.value(P + "requests_total", {"finish_reason": "stop"}) == 1
    assert b.value(P + "requests_total", {"finish_reason": "stop"}) is None


def test_render_is_the_text_exposition_format():
    m = EngineMetrics()
    m.request_finished(4, 2, 1, "abort", 0.5)
    text = m.render().decode()
    assert m.content_type.startswith("text/plain")
    assert f"# TYPE {P}requests_total counter" in text
    assert f'{P}requests_total{{finish_reason="abort"}} 1.0' in text
    assert f"{P}prompt_tokens_total 4.0" in text
    assert f'{P}e2e_request_latency_seconds_bucket{{le="0.5"}} 1.0' in text


def test_recording_from_many_threads_loses_nothing():
    m = EngineMetrics()

    def work() -> None:
        for _ in range(500):
            m.request_finished(2, 3, 1, "stop", 0.001)
            m.inter_token(0.002)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.value(P + "prompt_tokens_total") == 4000
    assert m.value(P + "requests_total", {"finish_reason": "stop"}) == 2000
    assert m.value(P + "inter_token_latency_seconds_count") == 2000
