"""The benchmark's report: a table on the terminal and PNG plots beside results.json."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report(results: dict[str, Any], out: Path) -> None:
    print(
        f"\nupstream: the dev upstream (a simulator), {results['upstream']['ttft_s'] * 1000:.0f} ms to the first "
        f"token, then {results['upstream']['tokens_per_s']:g} tokens/s; database: {results.get('database')}"
    )
    if burst := results.get("burst"):
        _report_burst(burst, out)
    if followup := results.get("followup"):
        rows = followup["rows"]
        floor = rows["floor"]["ttft_ms"]
        print(
            f"\n2. Follow-up turns: {followup['streams']} users within 2 s, a first turn against turn "
            f"{followup['turns_before'] + 1} (ms added to the time to first token)"
        )
        for name, row in rows.items():
            if name != "floor":
                print(
                    f"   {name:<8} p50 {row['ttft_ms']['p50'] - floor['p50']:>7.1f}  p99 "
                    f"{row['ttft_ms']['p99'] - floor['p99']:>7.1f}  CPU µs/token "
                    f"{_f(row['server_cpu_us_per_token'])}  errors {row['errors']}"
                )
    if fixed := results.get("fixed"):
        print(f"\n3. Fixed cost of one answer (one-token answers on an open socket, {fixed['answers']} in a row)")
        for name, row in fixed["peers"].items():
            print(
                f"   {name:<8} {row['cpu_ms_per_answer']:>6.2f} ms CPU, {row['wall_ms_per_answer']:>6.2f} ms "
                f"wall per answer, errors {row['errors']}"
            )
    if classic := results.get("classic"):
        print(f"\n4. One stream ({classic['tokens']} tokens, median of {classic['repeats']})")
        print(f"   {'path':<18} {'first token ms':>15} {'total ms':>10}")
        for name, row in classic["paths"].items():
            print(f"   {name:<18} {row['ttft_ms']:>15.1f} {row['total_ms']:>10.1f}")
    if levels := results.get("load"):
        print(f"\n5. Load on one daphne process ({levels['tokens']} tokens a stream; ms unless noted)")
        print(
            f"   {'streams':>7} {'added TTFT p50':>14} {'p99':>7} {'added gap p50':>13} {'p99':>7} "
            f"{'CPU µs/token':>12} {'steady':>7} {'KB/idle socket':>14} {'KB/live stream':>14} {'errors':>6}"
        )
        for row in levels["levels"]:
            floor, app = row["floor"], row["app"]
            print(
                f"   {app['streams']:>7} {app['ttft_ms']['p50'] - floor['ttft_ms']['p50']:>14.1f} "
                f"{app['ttft_ms']['p99'] - floor['ttft_ms']['p99']:>7.1f} "
                f"{app['lateness_ms']['p50'] - floor['lateness_ms']['p50']:>13.1f} "
                f"{app['lateness_ms']['p99'] - floor['lateness_ms']['p99']:>7.1f} "
                f"{_f(app['server_cpu_us_per_token']):>12} {_f(app['steady_cpu_us_per_token']):>7} "
                f"{_f(app['rss_kb_per_idle_socket']):>14} "
                f"{_f(app['rss_kb_per_live_stream']):>14} {app['errors']:>6}"
            )
        _plot_load(levels["levels"], out)
    if capacity := results.get("capacity"):
        print(
            f"\n6. Most live streams on one process with the added inter-token p99 ≤ 100 ms (all streaming): "
            f"{capacity['max_streams']}"
        )
        for row in capacity["levels"]:
            print(
                f"   {row['streams']:>5} streams: added p99 {row['added_p99_ms']:.1f} ms "
                f"(floor {row['floor_p99_ms']:.1f} ms), "
                f"{_f(row['server_cpu_us_per_token'])} µs CPU/token, errors {row['errors']}"
            )
        _plot_capacity(capacity, out)
    if coalescing := results.get("coalescing"):
        print("\n7. Coalescing window at 200 streams")
        print(f"   {'window ms':>9} {'frames/s':>9} {'kB/s':>8} {'CPU µs/token':>12} {'gap p99 ms':>10}")
        for row in coalescing:
            print(
                f"   {row['window_ms']:>9} {row['frames_per_s']:>9.0f} {row['bytes_per_s'] / 1000:>8.0f} "
                f"{_f(row['server_cpu_us_per_token']):>12} {row['lateness_ms']['p99']:>10.1f}"
            )
        _plot_coalescing(coalescing, out)
    if writes := results.get("writes"):
        if "skipped" in writes:
            print(f"\n8. Database writes: skipped ({writes['skipped']})")
        else:
            print(
                f"\n8. Database writes for one {writes['tokens']}-token answer streamed in "
                f"{writes['seconds_streaming']:.1f} s: {writes['message_row_writes']} message-row writes, "
                f"{writes['conversation_row_writes']} conversation-row writes ({writes['bound']})"
            )
    if scaleout := results.get("scaleout"):
        print("\n9. Behind nginx on Redis: one process against two")
        for name, rows in scaleout.items():
            for row in rows:
                print(
                    f"   {name:<11} {row['streams']:>5} streams: gap p99 {row['lateness_ms']['p99']:.1f} ms, "
                    f"TTFT p99 {row['ttft_ms']['p99']:.1f} ms, {_f(row['server_cpu_us_per_token'])} µs CPU/token, "
                    f"errors {row['errors']}"
                )
    if (choice := results.get("servers")) and "skipped" not in choice:
        print("\n10. ASGI servers at 200 streams (the product and the bare relay on each)")
        print(
            f"   {'server':<22} {'application':<11} {'CPU µs/token':>12} {'steady':>7} {'KB/idle socket':>14} "
            f"{'gap p99 ms':>10}"
        )
        for row in choice:
            print(
                f"   {row['server']:<22} {row['application']:<11} {_f(row['server_cpu_us_per_token']):>12} "
                f"{_f(row['steady_cpu_us_per_token']):>7} {_f(row['rss_kb_per_idle_socket']):>14} "
                f"{row['lateness_ms']['p99']:>10.1f}"
            )
    elif choice:
        print(f"\n10. ASGI servers: skipped ({choice['skipped']})")
    if browser := results.get("browser"):
        print("\n11. Browser (Chromium): main-thread time per update")
        for name, row in browser.items():
            print(
                f"   {name}: {row['characters']} characters, {row['updates']} updates, p50 {row['update_ms_p50']:.2f} "
                f"ms, p95 {row['update_ms_p95']:.2f} ms, max {row['update_ms_max']:.2f} ms; long tasks "
                f"{row['long_tasks']} (max {row['long_task_ms_max']:.0f} ms)"
            )


def _plot_load(levels: list[dict[str, Any]], out: Path) -> None:
    streams = [row["app"]["streams"] for row in levels]
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("ttft_ms", "time to first token"), ("lateness_ms", "inter-token delay")):
        for q, style in (("p50", "-o"), ("p99", "--o")):
            added = [row["app"][key][q] - row["floor"][key][q] for row in levels]
            latency.plot(streams, added, style, label=f"added {label} {q}")
    latency.set_xlabel("concurrent streams")
    latency.set_ylabel("ms added by the server")
    latency.set_xscale("symlog", linthresh=10)
    latency.set_yscale("symlog", linthresh=10)
    latency.legend(fontsize=8)
    latency.grid(alpha=0.3)
    places = range(len(streams))
    whole = [row["app"]["server_cpu_us_per_token"] or 0 for row in levels]
    steady = [row["app"]["steady_cpu_us_per_token"] or 0 for row in levels]
    cpu.bar([p - 0.2 for p in places], whole, width=0.4, label="whole run")
    cpu.bar([p + 0.2 for p in places], steady, width=0.4, label="all streams mid-answer")
    cpu.set_xticks(list(places), [str(s) for s in streams])
    cpu.axhline(40, color="red", linestyle=":", label="target 40 µs")
    cpu.set_xlabel("concurrent streams")
    cpu.set_ylabel("server CPU µs per token")
    cpu.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "load.png", dpi=110)
    plt.close(figure)


def _plot_capacity(capacity: dict[str, Any], out: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    rows = capacity["levels"]
    axes.plot([row["streams"] for row in rows], [row["added_p99_ms"] for row in rows], "-o")
    axes.axhline(100, color="red", linestyle=":", label="100 ms budget")
    axes.set_xlabel("live streams on one process")
    axes.set_ylabel("added inter-token p99 (ms)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "capacity.png", dpi=110)
    plt.close(figure)


def _plot_coalescing(rows: list[dict[str, Any]], out: Path) -> None:
    figure, frames = plt.subplots(figsize=(6, 4))
    windows = [row["window_ms"] for row in rows]
    frames.plot(windows, [row["frames_per_s"] for row in rows], "-o", label="frames/s")
    frames.set_xlabel("coalescing window (ms)")
    frames.set_ylabel("frames per second (200 streams)")
    cpu = frames.twinx()
    cpu.plot(windows, [row["server_cpu_us_per_token"] or 0 for row in rows], "-s", color="tab:orange", label="CPU")
    cpu.set_ylabel("server CPU µs per token")
    figure.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "coalescing.png", dpi=110)
    plt.close(figure)


PEER_NAMES = {"product": "this product", "naive": "naive design", "relay": "bare relay"}


def _report_burst(burst: dict[str, Any], out: Path) -> None:
    print(
        f"\n1. Burst: N users, one session each, connect and send a first message within {burst['spread_s']:g} s "
        f"({burst['tokens']} tokens an answer; ms added to the upstream's own figures)"
    )
    print(
        f"   {'users':>5} {'peer':<13} {'TTFT p50':>8} {'p99':>7} {'late p99':>8} {'CPU µs/token':>12} "
        f"{'steady':>7} {'RSS MB':>7} {'kB/stream':>9} {'errors':>6}"
    )
    for level in burst["levels"]:
        floor = level["floor"]
        for name in PEER_NAMES:
            if name not in level:
                continue
            row = level[name]
            print(
                f"   {level['streams']:>5} {PEER_NAMES[name]:<13} "
                f"{row['ttft_ms']['p50'] - floor['ttft_ms']['p50']:>8.1f} "
                f"{row['ttft_ms']['p99'] - floor['ttft_ms']['p99']:>7.1f} "
                f"{row['lateness_ms']['p99'] - floor['lateness_ms']['p99']:>8.1f} "
                f"{_f(row['server_cpu_us_per_token']):>12} {_f(row['steady_cpu_us_per_token']):>7} "
                f"{_f(row['rss_peak_mb']):>7} {_f(row['rss_kb_per_live_stream']):>9} {row['errors']:>6}"
            )
    _plot_burst(burst["levels"], out)


def _plot_burst(levels: list[dict[str, Any]], out: Path) -> None:
    names = [name for name in PEER_NAMES if all(name in level for level in levels)]
    # The time to first token itself, beside the upstream's own (the floor) at the same load: a difference
    # of two noisy percentiles can be negative, which a bar cannot show.
    shown = [("floor", "upstream directly"), *((name, PEER_NAMES[name]) for name in names)]
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    places = range(len(levels))
    width = 0.8 / max(1, len(shown))
    colours = {"floor": "grey", **{name: f"C{index}" for index, name in enumerate(PEER_NAMES)}}
    for offset, (name, label) in enumerate(shown):
        at = [p - 0.4 + width * (offset + 0.5) for p in places]
        p50 = [level[name]["ttft_ms"]["p50"] for level in levels]
        p99 = [level[name]["ttft_ms"]["p99"] for level in levels]
        latency.bar(at, p99, width=width, color=colours[name], alpha=0.35)
        latency.bar(at, p50, width=width, color=colours[name], label=label)
        if name != "floor":
            cpu_per_token = [level[name]["server_cpu_us_per_token"] or 0 for level in levels]
            cpu.bar(at, cpu_per_token, width=width, color=colours[name], label=label)
    labels = [str(level["streams"]) for level in levels]
    latency.set_xticks(list(places), labels)
    latency.set_yscale("log")
    latency.set_xlabel("users sending within 2 s")
    latency.set_ylabel("time to first token, ms (solid p50, light p99)")
    latency.legend(fontsize=8)
    latency.grid(alpha=0.3, axis="y")
    cpu.set_xticks(list(places), labels)
    cpu.set_xlabel("users sending within 2 s")
    cpu.set_ylabel("server CPU µs per token (whole run)")
    cpu.legend(fontsize=8)
    cpu.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(out / "burst.png", dpi=110)
    plt.close(figure)
