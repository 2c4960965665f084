"""The Python client against a real cluster (RINGSTORE_ENDPOINTS); run by
services/node/tests/python_client.rs, which starts the cluster."""

import threading
import time
import unittest
import uuid

import ringstore


def unique(prefix):
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


class KeysTest(unittest.TestCase):
    def setUp(self):
        self.c = ringstore.Client(timeout=5.0)

    def test_put_get_delete_and_versions(self):
        k = unique("py")
        self.assertIsNone(self.c.get(k))
        v1 = self.c.put(k, "one", if_version=0)
        self.assertEqual(self.c.get(k), (b"one", v1))
        with self.assertRaises(ringstore.PreconditionFailed):
            self.c.put(k, "lost", if_version=0)
        v2 = self.c.put(k, b"\x00\xff", if_version=v1)
        self.assertGreater(v2, v1)
        self.assertEqual(self.c.get(k), (b"\x00\xff", v2))
        self.assertTrue(self.c.delete(k))
        self.assertFalse(self.c.delete(k))

    def test_batch_and_scan(self):
        p = unique("pyb")
        results = self.c.batch([{"op": "put", "key": f"{p}/{i}", "value": str(i)} for i in range(10)])
        self.assertTrue(all(r["ok"] for r in results))
        items = self.c.scan(p + "/")
        self.assertEqual([k for k, _, _ in items], sorted(f"{p}/{i}" for i in range(10)))
        self.assertEqual(items[3][1], b"3")

    def test_txn_compares_then_runs_one_branch_and_prefix_delete_counts(self):
        tag = "{" + unique("py") + "}"
        a, b = f"{tag}/a", f"{tag}/b"
        ok, results = self.c.txn(
            compare=[{"key": a, "exists": False}],
            then=[{"op": "put", "key": a, "value": "1"}, {"op": "put", "key": b, "value": "2"}],
        )
        self.assertTrue(ok)
        self.assertEqual(results[0]["version"], results[1]["version"], "one entry, one version")
        ok, results = self.c.txn(
            compare=[{"key": a, "exists": False}],
            then=[{"op": "delete", "key": a}],
            otherwise=[{"op": "get", "key": b}],
        )
        self.assertFalse(ok)
        self.assertEqual(results[0]["value"], "2")
        with self.assertRaises(ringstore.RingstoreError) as e:
            # Eight random keys all on one of the cluster's 4 shards: a
            # chance of 4^-7.
            self.c.txn(then=[{"op": "get", "key": unique("x")} for _ in range(8)])
        self.assertEqual(e.exception.code, "cross_shard")
        self.assertEqual(self.c.delete_prefix(tag + "/"), 2)
        self.assertIsNone(self.c.get(a))

    def test_watch_sees_changes_in_order_and_resumes(self):
        k = unique("pyw")
        w = self.c.watch(key=k)
        events = []

        def follow():
            for e in w:
                events.append(e)
                if len(events) == 3:
                    return

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        self.assertTrue(w.started.wait(10), "the watch starts")
        versions = [self.c.put(k, f"v{i}") for i in range(2)]
        self.c.delete(k)
        t.join(timeout=20)
        w.close()
        self.assertEqual([e.kind for e in events], ["put", "put", "delete"])
        self.assertEqual([e.version for e in events[:2]], versions)
        self.assertEqual(events[1].value, b"v1")
        # From the first event's position: the rest, not the first again.
        later = []
        for e in self.c.watch(key=k, start=events[0].position):
            later.append(e)
            if len(later) == 2:
                break
        self.assertEqual([(e.kind, e.version) for e in later], [(e.kind, e.version) for e in events[1:]])

    def test_prefix_watch_across_shards(self):
        p = unique("pyp")
        w = self.c.watch(prefix=p + "/")
        got = []

        def follow():
            for e in w:
                got.append(e.key)
                if len(got) == 8:
                    return

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        self.assertTrue(w.started.wait(10))
        self.c.batch([{"op": "put", "key": f"{p}/{i}", "value": "x"} for i in range(8)])
        t.join(timeout=20)
        w.close()
        self.assertEqual(sorted(got), sorted(f"{p}/{i}" for i in range(8)))


class LockTest(unittest.TestCase):
    def setUp(self):
        self.c = ringstore.Client(timeout=5.0)

    def test_context_manager_renews_reenters_and_fences(self):
        name = unique("pyl")
        lock = self.c.lock(name, ttl=1.0, wait=2.0)
        with lock:
            first = lock.token
            # Held past several ttls: the background renewal keeps it.
            time.sleep(2.5)
            self.assertFalse(lock.lost.is_set())
            with lock:  # re-entry counts holds, same token
                self.assertEqual((lock.holds, lock.token), (2, first))
            self.assertEqual(lock.holds, 1)
            lock.put(name + "/data", "by the holder")
            with self.assertRaises(ringstore.LockHeld):
                self.c.lock(name, ttl=1.0, wait=0.2).acquire()
        with self.c.lock(name, ttl=1.0, wait=0.5) as again:
            self.assertGreater(again.token, first)

    def test_a_holder_whose_lease_ended_is_refused_by_the_store(self):
        name = unique("pyf")
        old = self.c.lock(name, ttl=0.5, wait=1.0).acquire()
        old._stop.set()  # a paused holder: its renewals stop
        time.sleep(1.0)
        new = self.c.lock(name, ttl=5.0, wait=3.0).acquire()
        self.assertGreater(new.token, old.token)
        new.put(name + "/data", "by the new holder")
        with self.assertRaises(ringstore.RingstoreError) as e:
            old.put(name + "/data", "by the old holder")
        self.assertEqual(e.exception.code, "fenced")
        self.assertEqual(self.c.get(name + "/data")[0], b"by the new holder")
        new.release()


if __name__ == "__main__":
    unittest.main()
