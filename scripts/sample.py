#!/usr/bin/env python3
"""usage: scripts/sample.py [--seed N] [--days D]

Prints a realistic sample of Stockwire events as NDJSON (the `stockwire publish --file`
format): 3 warehouses, 20 SKUs, several locations each, D days (default 4) of backdated
deliveries, sales, moves, breakage and counts, oldest first, ending a minute ago. Sales
never exceed what a location holds. Deterministic for a seed; msg ids are stable, so a
re-import inside the duplicate window stores nothing twice.
"""
import argparse
import json
import random
import sys
import time

WAREHOUSES = ["ams1", "rtm1", "ber1"]
SKUS = ["apple", "banana", "orange", "pear", "kiwi", "mango", "grape", "lemon", "lime",
        "cherry", "plum", "peach", "apricot", "melon", "fig", "date", "papaya", "guava",
        "lychee", "coconut"]
LOCATIONS = ["A1", "A2", "A3", "B1", "B2", "C1"]
# Units sold per day, roughly: a clear fast mover, a few steady ones, and coconuts, which
# sold on the first day only (stalled since).
DAILY_SALES = {"apple": 60, "banana": 45, "orange": 25, "pear": 15, "coconut": 6}
FIRST_DAY_ONLY = {"coconut"}
HOUR_MS = 3600 * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=4)
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    end = int(time.time() * 1000) - 60_000
    start = end - args.days * 24 * HOUR_MS
    events = []
    stock = {}

    def add(at, kind, wh, sku, **fields):
        events.append((at, dict(type=f"stock.{kind}", warehouse=wh, sku=sku, **fields)))

    for wh in WAREHOUSES:
        for sku in SKUS:
            home = rnd.sample(LOCATIONS, 2)
            for loc in home:
                qty = rnd.randrange(40, 240, 10)
                add(start + rnd.randrange(0, 2 * HOUR_MS), "received", wh, sku, location=loc, quantity=qty)
                stock[(wh, sku, loc)] = qty
            per_day = DAILY_SALES.get(sku, rnd.randrange(2, 12))
            for day in range(args.days):
                sold_today = max(0, int(rnd.gauss(per_day, per_day / 4))) if per_day else 0
                if sku in FIRST_DAY_ONLY and day > 0:
                    sold_today = 0
                while sold_today > 0:
                    loc = rnd.choice(home)
                    q = min(sold_today, rnd.randint(1, 5), stock[(wh, sku, loc)])
                    if q == 0:
                        loc = home[0] if loc == home[1] else home[1]
                        q = min(sold_today, rnd.randint(1, 5), stock[(wh, sku, loc)])
                        if q == 0:
                            break
                    at = start + day * 24 * HOUR_MS + 3 * HOUR_MS + rnd.randrange(0, 20 * HOUR_MS)
                    add(at, "sold", wh, sku, location=loc, quantity=q)
                    stock[(wh, sku, loc)] -= q
                    sold_today -= q
            if rnd.random() < 0.25:
                src, dst = home[0], rnd.choice([l for l in LOCATIONS if l != home[0]])
                q = min(10, stock[(wh, sku, src)])
                if q > 0:
                    add(start + 30 * HOUR_MS + rnd.randrange(0, HOUR_MS), "moved", wh, sku, **{"from": src, "to": dst, "quantity": q})
                    stock[(wh, sku, src)] -= q
            if rnd.random() < 0.1:
                loc = home[1]
                q = min(3, stock[(wh, sku, loc)])
                if q > 0:
                    add(start + 50 * HOUR_MS + rnd.randrange(0, HOUR_MS), "destroyed", wh, sku,
                        location=loc, quantity=q, reason=rnd.choice(["damaged in transit", "rotten", "dropped"]))
                    stock[(wh, sku, loc)] -= q
        loc = rnd.choice(LOCATIONS)
        add(end - 2 * HOUR_MS, "corrected", wh, "lemon", location=loc, quantity=rnd.randrange(0, 30))

    events.sort(key=lambda e: e[0])
    out = sys.stdout
    for i, (at, event) in enumerate(events):
        event["timestamp_ms"] = min(at, end)
        event["msg_id"] = f"sample-{args.seed}-{i}"
        out.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    main()
