#!/usr/bin/env python3
"""Checks Cargo.lock against the RustSec advisory database, offline.

What `cargo audit` does, without its network fetch (GitHub is not
reachable from CI here) and without building it (minutes on two cores):
the advisories of every crate in Cargo.lock are vendored under
audit/advisory-db/ by scripts/vendor-advisories.sh from a checkout of
github.com/rustsec/advisory-db, with the list of every crate the database
names, so a new dependency with advisories that were not vendored fails
here instead of passing unseen.

A locked version is affected unless it matches `patched` or `unaffected`
(RustSec's rule). An affected vulnerability fails the check unless
audit/accepted.toml accepts it with a reason; informational advisories
(unmaintained, unsound, notice) are listed as warnings. Exit status 1 on
any failure. Part of `make test`.
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB = ROOT / "audit" / "advisory-db"
ACCEPTED = ROOT / "audit" / "accepted.toml"


def parse_version(v):
    """'1.2.3-alpha.1+build' -> ((1, 2, 3), ('alpha', 1)) comparable tuples."""
    v = v.strip().split("+", 1)[0]
    core, _, pre = v.partition("-")
    parts = [int(p) for p in core.split(".")]
    while len(parts) < 3:
        parts.append(0)
    # A release sorts after its pre-releases.
    pre_key = tuple((0, int(x)) if x.isdigit() else (1, x) for x in pre.split(".")) if pre else ((2, ""),)
    return tuple(parts[:3]), pre_key


def upper_bound(op, base):
    (major, minor, patch), _ = base
    if op == "~":
        return (major, minor + 1, 0)
    if major > 0:
        return (major + 1, 0, 0)
    if minor > 0:
        return (0, minor + 1, 0)
    return (0, 0, patch + 1)


def matches_clause(version, clause):
    m = re.fullmatch(r"\s*(>=|<=|>|<|=|\^|~)?\s*([0-9][0-9A-Za-z.+-]*)\s*", clause)
    if not m:
        raise ValueError(f"unsupported version requirement {clause!r}")
    op, base = m.group(1) or "^", parse_version(m.group(2))
    if op == ">=":
        return version >= base
    if op == ">":
        return version > base
    if op == "<=":
        return version <= base
    if op == "<":
        return version < base
    if op == "=":
        return version == base
    return version >= base and version[0] < upper_bound(op, base)


def matches(version, requirement):
    """A requirement is clauses joined by commas, all of which must hold."""
    return all(matches_clause(version, c) for c in requirement.split(","))


def read_advisory(path):
    """(TOML front matter, title) of an advisory file."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r"```toml\n(.*?)\n```", text, re.S)
    if not m:
        raise ValueError(f"{path}: no TOML front matter")
    title = re.search(r"^# (.+)$", text, re.M)
    return tomllib.loads(m.group(1)), title.group(1) if title else path.stem


def self_test():
    v = parse_version
    cases = [
        ("2.28.0", ">= 3.7.2", False),
        ("3.7.2", ">= 3.7.2", True),
        ("0.3.27", ">= 0.4.16", False),
        ("0.4.20", ">= 0.4.16", True),
        ("0.5.9", "^0.5.4", True),
        ("0.6.0", "^0.5.4", False),
        ("1.2.0", ">= 1.1.0, < 1.2.0", False),
        ("1.1.5", ">= 1.1.0, < 1.2.0", True),
        ("1.0.0-alpha.1", ">= 1.0.0", False),
        ("0.0.3", "^0.0.3", True),
        ("0.0.4", "^0.0.3", False),
        ("1.4.9", "~1.4.1", True),
        ("1.5.0", "~1.4.1", False),
    ]
    for version, req, want in cases:
        assert matches(v(version), req) == want, (version, req, want)


def main():
    self_test()
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    packages = [p for p in lock["package"] if p.get("source", "").startswith("registry+")]
    known = set((DB / "ALL_CRATES").read_text().split())
    vendored = {d.name for d in (DB / "crates").iterdir() if d.is_dir()} if (DB / "crates").exists() else set()
    accepted = tomllib.loads(ACCEPTED.read_text()).get("accept", []) if ACCEPTED.exists() else []
    accepted_ids = {a["id"]: a for a in accepted}
    for a in accepted:
        if not a.get("reason", "").strip():
            print(f"audit: {a['id']} is accepted without a reason", file=sys.stderr)
            return 1

    failures, warnings, accepted_hits, checked = [], [], [], 0
    for p in packages:
        name, version = p["name"], parse_version(p["version"])
        if name in known and name not in vendored:
            failures.append(f"{name} has advisories that are not vendored: run scripts/vendor-advisories.sh")
            continue
        for adv_path in sorted((DB / "crates" / name).glob("*.md")) if name in vendored else []:
            adv, title = read_advisory(adv_path)
            a, versions = adv["advisory"], adv.get("versions", {})
            checked += 1
            if a.get("withdrawn"):
                continue
            safe = any(matches(version, r) for r in versions.get("patched", []) + versions.get("unaffected", []))
            if safe:
                continue
            line = f"{a['id']} {name} {p['version']}: {title}"
            if a["id"] in accepted_ids:
                reason = " ".join(accepted_ids[a["id"]]["reason"].split())
                accepted_hits.append(f"{line}\n    why: {reason}")
            elif a.get("informational"):
                warnings.append(f"{line} ({a['informational']})")
            else:
                failures.append(line)

    source = (DB / "SOURCE").read_text().strip()
    print(f"audit: {len(packages)} locked crates against {checked} advisories of the RustSec database ({source})")
    for w in warnings:
        print(f"audit: warning: {w}")
    for a in accepted_hits:
        print(f"audit: accepted: {a}")
    stale = set(accepted_ids) - {h.split(" ", 1)[0] for h in accepted_hits}
    for s in sorted(stale):
        print(f"audit: note: {s} is accepted in audit/accepted.toml but no longer affects Cargo.lock")
    for f in failures:
        print(f"audit: VULNERABLE: {f}", file=sys.stderr)
    print(f"audit: {len(failures)} vulnerable, {len(accepted_hits)} accepted, {len(warnings)} warning(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
