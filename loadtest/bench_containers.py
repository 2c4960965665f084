#!/usr/bin/env python3
"""Deployment figures (issue 13), with the Docker Engine of this machine.

1. The image: ringstore:bench, built FROM scratch by
   deploy/docker/build-local-image.sh from the release binary; its size.
2. Pods ringstore-0..2 on a private network (as the StatefulSet runs them):
   the time from `docker run` to /readyz answering 200.
3. KEYS keys of VALUE_BYTES each, then ringstore-3 and ringstore-4 join:
   the time until the Rebalancer is idle with replicas within one per node.
4. A pod is killed while WRITERS writers write for FAULT_SECS: failed
   writes by status (a write to the killed pod moves to the next one; only
   503s and refused connections of the dead pod are expected).

Usage: loadtest/bench_containers.py BINARY [--keys 10000] [--value-bytes 100]
Everything it creates is removed at the end.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ENV_COMMON = [
    "RINGSTORE_ID_FROM_HOSTNAME=true",
    "RINGSTORE_INITIAL_CLUSTER=1=ringstore-0:7080,2=ringstore-1:7080,3=ringstore-2:7080",
    "RINGSTORE_JOIN=http://ringstore-0:8080",
    "RINGSTORE_SHARDS=16",
]


def docker(*args):
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def http(method, url, body=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Run:
    def __init__(self, prefix):
        self.prefix, self.network, self.containers = prefix, prefix, []
        docker("network", "create", self.network)

    def name(self, pod):
        return f"{self.prefix}-ringstore-{pod}"

    def start(self, pod, image):
        host = f"ringstore-{pod}"
        env = ENV_COMMON + [f"RINGSTORE_ADVERTISE_PEER={host}:7080", f"RINGSTORE_ADVERTISE_HTTP={host}:8080"]
        args = ["run", "-d", "--name", self.name(pod), "--hostname", host, "--network", self.network,
                "--network-alias", host]
        for e in env:
            args += ["-e", e]
        docker(*args, image)
        self.containers.append(self.name(pod))

    def url(self, pod):
        ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.name(pod))
        return f"http://{ip}:8080"

    def cleanup(self):
        for c in self.containers:
            subprocess.run(["docker", "rm", "-f", c], capture_output=True)
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True)


def wait(what, pred, within):
    start = time.monotonic()
    while time.monotonic() - start < within:
        if pred():
            return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"not within {within} s: {what}")


def balanced(url, nodes):
    s, b = http("GET", f"{url}/v1/rebalance")
    if s != 200:
        return False
    v = json.loads(b)
    counts = {n["id"]: n["replicas"] for n in v["nodes"] if n["state"] == "up"}
    c = [counts.get(n, 0) for n in nodes]
    return v["state"] == "idle" and max(c) - min(c) <= 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--fault-secs", type=int, default=10)
    ap.add_argument("--out")
    a = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    image = "ringstore:bench"
    subprocess.run([os.path.join(root, "deploy/docker/build-local-image.sh"), a.binary, image], check=True,
                   capture_output=True)
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6
    run = Run(f"rsbench{os.getpid()}")
    report = {"image_mb": round(size_mb, 1), "keys": a.keys, "value_bytes": a.value_bytes}
    try:
        t0 = time.monotonic()
        for pod in range(3):
            run.start(pod, image)
        urls = [run.url(p) for p in range(3)]
        ready = []
        for u in urls:
            wait("a pod is ready", lambda u=u: http("GET", f"{u}/readyz", timeout=2)[0] == 200, 120)
            ready.append(time.monotonic() - t0)
        report["start_to_ready_s"] = [round(r, 2) for r in ready]
        value = b"v" * a.value_bytes
        t = time.monotonic()
        with cf.ThreadPoolExecutor(32) as ex:
            st = list(ex.map(lambda i: http("PUT", f"{urls[i % 3]}/v1/kv/key-{i}", value)[0], range(a.keys)))
        bad = sum(1 for s in st if s != 200)
        if bad:
            raise SystemExit(f"{bad} loads failed")
        report["load_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        run.start(3, image)
        run.start(4, image)
        report["scale_out_3_to_5_s"] = round(wait("3 -> 5 balanced", lambda: balanced(urls[0], [1, 2, 3, 4, 5]), 1800), 1)
        all_urls = [run.url(p) for p in range(5)]
        # A pod is killed under writes.
        stop = threading.Event()
        fails, acks, lock = {}, [0], threading.Lock()

        def writer(w):
            i, target = 0, w % 4
            live = [all_urls[p] for p in (0, 2, 3, 4)] + [all_urls[1]]
            while not stop.is_set() and i < 1_000_000:
                s, _ = http("PUT", f"{live[target]}/v1/kv/w{w}-{i}", b"x", timeout=10)
                with lock:
                    if s == 200:
                        acks[0] += 1
                    else:
                        fails[s] = fails.get(s, 0) + 1
                        target = (target + 1) % 4
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(a.writers)]
        for th in threads:
            th.start()
        time.sleep(2)
        docker("kill", run.name(1))
        time.sleep(a.fault_secs)
        stop.set()
        for th in threads:
            th.join()
        report["fault_writes_ok"] = acks[0]
        report["fault_writes_failed_by_status"] = {str(k): v for k, v in sorted(fails.items())}
    finally:
        run.cleanup()
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    print(json.dumps(report, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
