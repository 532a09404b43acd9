"""One run of listings through a running LocalStack, and what it cost: listings/s and each process's CPU-ms per
listing (read from /proc before and after), for the benchmarks that measure the whole pipeline (bench-plumbing here,
bench-gpu's pipeline part on a lent GPU machine). Imports nothing a GPU machine lacks (no psycopg, no trainer)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from services.common.contracts.product_classification.v1 import common_pb2
from services.drivers.traffic import AllClassified, MARKETPLACES, TopicReader, submit_listings
from services.localstack.stack import LocalStack

TICKS = os.sysconf("SC_CLK_TCK")
# The benchmarks send the same photos through one stack run after run (and warm it with some of them): with the
# preprocessing workers' prediction cache on, every run after the first would measure photos answered from memory.
# What they measure is a photo's whole cost, so their stacks turn it off; bench-plumbing measures the cache apart.
EVERY_PHOTO_DECODED = {"PREPROCESSING_PREDICTION_CACHE_MB": "0"}


# -- CPU time per process

def _stat(process: Path) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state first, so the parent's pid is [1])."""
    return (process / "stat").read_text().rsplit(")", 1)[1].split()


def _spent_s(fields: list[str]) -> float:
    """utime, stime, cutime and cstime: the process's CPU seconds with what its ended, waited-for children spent."""
    return sum(int(value) for value in fields[11:15]) / TICKS


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and every descendant alive now (Triton's Python-backend stubs), with
    what their children that ended and were waited for had spent (a stub that exits would otherwise take its CPU
    time out of the sum: on a GPU machine a run's Triton figure once came out negative)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat(entry)
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError):
                continue
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += _spent_s(_stat(Path(f"/proc/{current}")))
        except (OSError, IndexError):
            continue
        stack.extend(children.get(current, []))
    return total


def postgres_cpu_s() -> float:
    """Every postgres process of the machine's server (shared: other activity would count too), with the backends
    that ended (the postmaster waits for them)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _spent_s(_stat(entry))
            except (OSError, IndexError):
                continue
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process: /proc/stat less idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


def cpu_snapshot(stack: LocalStack) -> dict[str, float]:
    snapshot = {name: process_tree_cpu_s(service.process.process.pid) for name, service in stack.services.items()}
    snapshot["broker"] = process_tree_cpu_s(stack.broker._process.process.pid)
    snapshot["triton"] = process_tree_cpu_s(stack.triton._process.process.pid)
    snapshot["postgres"] = postgres_cpu_s()
    times = os.times()
    snapshot["load_generator"] = times.user + times.system
    return snapshot


# -- a run

def listings(photos: list[tuple[bytes, str]], prefix: str) -> list[common_pb2.Listing]:
    made = []
    for index, (data, kind) in enumerate(photos):
        marketplace, locale = MARKETPLACES[index % len(MARKETPLACES)]
        made.append(common_pb2.Listing(listing_id=f"{prefix}-{index:05d}-{kind}", marketplace=marketplace,
                                       locale=locale, image_bytes=data))
    return made


def grouped_by_service(values: dict[str, float]) -> dict[str, float]:
    """preprocessing-2 and the like counted with their service; services_total for gateway, preprocessing, results."""
    grouped: dict[str, float] = {}
    for name, value in values.items():
        group = name.split("-")[0]
        grouped[group] = round(grouped.get(group, 0.0) + value, 3)
    grouped["services_total"] = round(sum(grouped.get(n, 0.0) for n in ("gateway", "preprocessing", "results")), 3)
    return grouped


def idle_floor(stack: LocalStack, seconds: float = 10.0) -> dict[str, float]:
    """CPU-ms per second each process spends with no listing in flight (Kafka polls and heartbeats, the watch hub's
    poll, health checks): a run's CPU-ms per listing holds this floor times its seconds over its listings."""
    before = cpu_snapshot(stack)
    began = time.perf_counter()
    time.sleep(seconds)
    after = cpu_snapshot(stack)
    elapsed = time.perf_counter() - began
    return grouped_by_service({name: (after[name] - before[name]) * 1000 / elapsed for name in after})


def less_idle(run_figures: dict, floor: dict[str, float]) -> float:
    """The services' CPU-ms per listing less what their idle floor accounts for over the run."""
    idle_ms = floor["services_total"] * run_figures["seconds"] / max(run_figures["classified"], 1)
    return round(run_figures["cpu_ms_per_listing"]["services_total"] - idle_ms, 3)


class StackRuns:
    """Runs on one running stack, their classifications read by one reader that keeps its place from run to run.

    A reader made for each run reads the output topic from its beginning (the local broker cannot seek to its end),
    so each run read every earlier run's classifications again while it was being measured: the second worker's run
    behind 4,128 of them (68 MB), which the broker served and the load generator fetched on the same cores."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        # Each caller's first run is a warm-up, which reads past whatever the topic held before.
        self.reader = TopicReader(stack.kafka_settings, stack.kafka_settings.topics.listing_classified)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> StackRuns:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(self, photos, prefix: str, held: bool = False) -> dict:
        """Submits the photos as listings and reads until every one is classified. Timed from the first submission,
        the load generator producing beside the pipeline on the same cores; held: the preprocessing workers stopped
        (SIGSTOP) while the load generator submits and timed from when they go on, the pipeline draining a backlog
        as a consumer benchmark does. Either way every process's CPU from before the first submission is counted
        per listing, the broker's for taking the listings in and the load generator's for producing them too."""
        stack = self.stack
        batch = listings(photos, prefix)
        wanted = {listing.listing_id for listing in batch}
        workers = [service.process.process.pid for name, service in stack.services.items()
                   if name.split("-")[0] == "preprocessing"]
        before = cpu_snapshot(stack)
        busy_before = machine_busy_s()
        began = time.perf_counter()
        if held:
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
        try:
            submit_listings(stack.kafka_settings, batch)
        finally:
            if held:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
        submitted = time.perf_counter() - began
        if held and submitted * 1000 > stack.kafka_settings.session_timeout_ms:
            # Stopped past the session timeout, the workers were taken out of their group: the run goes on slower
            # (they rejoin and the partitions are handed out again), so its figure errs low, never high.
            print(f"  {prefix}: submitting took {submitted:.1f} s, past the workers' session timeout: the "
                  "workers rejoined their group during this run", flush=True)
        if held:
            busy_before = machine_busy_s()
            began = time.perf_counter()
        classified = AllClassified(wanted)
        read = self.reader.read(classified, 900)
        elapsed = time.perf_counter() - began
        busy = machine_busy_s() - busy_before
        after = cpu_snapshot(stack)
        done = len(wanted & classified.seen)
        grouped = grouped_by_service({name: (after[name] - before[name]) * 1000 / max(done, 1) for name in after})
        return {"listings": len(batch), "classified": done, "seconds": round(elapsed, 2),
                "listings_per_s": round(done / elapsed, 1), "cpu_ms_per_listing": grouped,
                # how long the load generator took to have every listing acknowledged (held: before the timing)
                "submitted_s": round(submitted, 2), "held": held,
                # classifications the reader fetched in this run: this run's, not an earlier run's again
                "classifications_read": len(read),
                # how many of the machine's cores were busy on average while timed: a second worker can only add
                # what is left
                "cores_busy": round(busy / elapsed, 2)}
