"""The edge-sites fault drill behind `scripts/chaos --sites`: two sites cut off, then the books.

Starts a hub (the repo's nats.conf: users, fsync always, JetStream domain hub) and two edge
sites, warehouses ams1 and ber1 (site/site.conf, each its own store and domain, fsync
always), every server on free ports in a temp dir, with scripts/relay.py in each site's
leaf link. It sets them up as scripts/site-up does (`setup` at the hub, `setup --site` at
each site, `site add` at the hub, the hub's refused-events.conf written by `site conf` and
reloaded), and runs stock-projector and low-stock-watcher, each as its own user, at the hub
and at each site.

Link up: each site stocks its products (`publish --file`), the hub its own warehouse nyc1;
the hub must refuse a site's event from the CLI (exit 2) and from a raw NATS publish
(permissions violation), and get every site event.

Outage: both relays cut (SIGUSR1). Each site's clerk then records --events events at its
own server, one command after the other: deliveries (single and whole files), checked
moves, checked sales (some beyond the stock, which must be refused with exit 3 and not
stored), transfers to the other site (the out leg only) and the receipts of the other
site's transfers (`transit receive` with every flag: the out leg is not there), one of them
short; a receipt sent again must answer "already received" and another one be refused.
The hub's clerk meanwhile sells in nyc1, ships to ams1 and receives from ber1. Each site's
server is SIGKILLed and restarted once (same store) while its clerk goes on: a command
that exits 1 is tried again with the same msg id (transfer id). Meanwhile `stockwire site
list` at the hub must show both sites offline (silent longer than --site-offline-s) and
none of their outage events.

Link back (SIGUSR2): the hub must catch up; then every acknowledged event of a site is at
the hub exactly once, no refused one anywhere, in the site's order (the site's whole log
and the hub's copy of it compared id by id, and both equal to the clerk's books); every one
of them came by sourcing (`history --json` marks it `"sourced": true`), none of the hub's
own is; each site's stock view equals its books and the hub's view of that warehouse; each
transfer is closed at the hub (`transit list --all`: received, or short by the unit lost);
`site list` shows both online again; `verify` is clean at the hub; no dead letters; every
service still runs. The events, the commands and the faults follow from --seed; exit 0
when every check passes, 1 otherwise (the logs are kept and their path printed).
"""

import argparse
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

# chaos.py's helpers, imported as a module (no bytecode written into scripts/).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402  (free_port, password, Stack)

SITES = ["ams1", "ber1"]
HUB_WAREHOUSE = "nyc1"
SERVICES = ["stock-projector", "low-stock-watcher"]
LOCATIONS = ["A1", "A2", "B1"]
DOCK = "DOCK"
# Any one stockwire command; the CLI itself waits up to 30 s for a server that is away.
CLI_TIMEOUT_S = 90
# The stockwire commands running now, killed if the drill stops before they end.
RUNNING, RUNNING_LOCK = set(), threading.Lock()


class Timed:
    """`cli` with a timeout: a command that hangs is killed and counts as exit 124."""

    def cli(self, user, *args, stdin=None):
        argv = [os.path.join(self.bin_dir, "stockwire"), *args]
        proc = subprocess.Popen(argv, env=self.env(user), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE)
        with RUNNING_LOCK:
            RUNNING.add(proc)
        try:
            out, err = proc.communicate(stdin, timeout=CLI_TIMEOUT_S)
            return subprocess.CompletedProcess(argv, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return subprocess.CompletedProcess(
                argv, 124, out, "%s\ntimed out after %d s" % (err, CLI_TIMEOUT_S))
        finally:
            with RUNNING_LOCK:
                RUNNING.discard(proc)

    def json_lines(self, user, *args):
        return [json.loads(l) for l in self.ok(user, "--json", *args).splitlines() if l.strip()]


class Hub(Timed, chaos.Stack):
    """The hub: chaos.py's single node (nats.conf with free ports, its own copies of
    accounts.conf and refused-events.conf in the work dir)."""

    def __init__(self, root, bin_dir, work):
        super().__init__(root, bin_dir, work)
        self.leaf_port = leaf_port(self.conf)

    def reload(self):
        """SIGHUP, then waits until the server says it reloaded."""
        log = os.path.join(self.work, "nats-server.log")
        before = log_count(log, "Reloaded server configuration")
        self.server.send_signal(signal.SIGHUP)
        until(lambda: log_count(log, "Reloaded server configuration") > before, 15,
              "the hub did not reload its configuration")


class Site(Timed, chaos.Stack):
    """An edge site's server (site/site.conf) and its services, as site-up starts them:
    its own copy of the configuration, a refused-events.conf that refuses nothing."""

    def __init__(self, root, bin_dir, work, warehouse, leaf_port):
        self.root, self.bin_dir = root, bin_dir
        self.work = os.path.join(work, "site-" + warehouse)
        self.warehouse = warehouse
        self.server, self.services, self.nodes = None, {}, []
        self.lock = threading.Lock()
        self.port = chaos.free_port()
        self.leaf_port = leaf_port
        conf_dir = os.path.join(self.work, "conf")
        os.makedirs(os.path.join(conf_dir, "site"))
        self.conf = os.path.join(conf_dir, "site", "site.conf")
        shutil.copy(os.path.join(root, "site", "site.conf"), self.conf)
        shutil.copy(os.path.join(root, "accounts.conf"), conf_dir)
        with open(os.path.join(conf_dir, "refused-events.conf"), "w") as f:
            f.write("# A site refuses nothing of its own warehouse.\ndeny: []\n")

    def start_server(self):
        env = dict(os.environ,
                   STOCKWIRE_SITE=self.warehouse,
                   STOCKWIRE_SITE_LISTEN="127.0.0.1:%d" % self.port,
                   STOCKWIRE_SITE_STORE=os.path.join(self.work, "jetstream"),
                   STOCKWIRE_HUB_LEAFNODE_URL="nats-leaf://site:%s@127.0.0.1:%d"
                   % (chaos.password("site"), self.leaf_port))
        log = open(os.path.join(self.work, "nats-server.log"), "a")
        self.server = subprocess.Popen(
            [os.path.join(self.root, ".tools/bin/nats-server"), "-c", self.conf],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        until(lambda: accepts(self.port), 15, "site %s's server did not start; see %s"
              % (self.warehouse, os.path.join(self.work, "nats-server.log")))


class Relay:
    """scripts/relay.py in a leaf link: SIGUSR1 cuts it, SIGUSR2 restores it."""

    def __init__(self, root, work, name, target):
        self.port = chaos.free_port()
        self.target = target
        self.log = open(os.path.join(work, "relay-%s.log" % name), "a")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(root, "scripts", "relay.py"), str(self.port),
             str(target)], stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        until(lambda: accepts(self.port), 10, "the relay for %s did not start" % name)

    def passes(self):
        """True when a connection through the relay reaches the hub (which greets a leaf
        node with INFO), False when the relay drops it at once (cut)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.settimeout(2)
                return sock.recv(4) != b""
        except OSError:
            return False

    def cut(self):
        self.proc.send_signal(signal.SIGUSR1)
        until(lambda: not self.passes(), 10, "the relay did not cut")

    def restore(self):
        self.proc.send_signal(signal.SIGUSR2)
        until(self.passes, 10, "the relay did not restore")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def leaf_port(conf):
    with open(conf) as f:
        text = f.read()
    block = text[text.index("leafnodes {"):]
    return int(block.split("listen:", 1)[1].split()[0].rsplit(":", 1)[1])


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def log_count(path, text):
    try:
        with open(path, errors="replace") as f:
            return f.read().count(text)
    except OSError:
        return 0


def until(test, within_s, failure, pause=0.1):
    """Waits until test() is true, at most within_s seconds; SystemExit(failure) after
    (failure: a text, or a function that says it)."""
    end = time.time() + within_s
    while True:
        if test():
            return
        if time.time() > end:
            raise SystemExit(failure() if callable(failure) else failure)
        time.sleep(pause)


def raw_publish(port, user, subject):
    """A publish straight on the NATS protocol, as any client could send it: the
    server's answers up to the PONG after it."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        lines = sock.makefile("rb")
        lines.readline()  # INFO
        connect = {"user": user, "pass": chaos.password(user), "verbose": False,
                   "pedantic": False, "echo": False, "name": "chaos-sites-raw"}
        sock.sendall(("CONNECT %s\r\nPUB %s 2\r\n{}\r\nPING\r\n"
                      % (json.dumps(connect), subject)).encode())
        while True:
            line = lines.readline().decode(errors="replace").strip()
            if not line:
                break
            answers.append(line)
            if line == "PONG":
                break
    return answers


# ---------------------------------------------------------------------------------------
# The plan: every command of every clerk, with what the books say it must get, from --seed.

class Books:
    """A warehouse's stock by (sku, location), as the commands' expected outcomes leave it."""

    def __init__(self):
        self.stock = defaultdict(int)

    def add(self, sku, loc, q):
        self.stock[(sku, loc)] += q

    def take(self, sku, loc, q):
        assert self.stock[(sku, loc)] >= q
        self.stock[(sku, loc)] -= q

    def stocked(self, at_least=1):
        return sorted(k for k, q in self.stock.items() if q >= at_least)

    def view(self):
        """{sku: {location: units}} without empty locations."""
        out = defaultdict(dict)
        for (sku, loc), q in self.stock.items():
            if q:
                out[sku][loc] = q
        return dict(out)


class Clerk:
    """One home's commands, in order. Each op: kind, args (or a file), the ids it stores when
    acknowledged, and the outcome the books expect ("stored", "rejected", "duplicate")."""

    def __init__(self, seed, warehouse, skus):
        self.w = warehouse
        self.rng = random.Random("chaos-sites-%d-%s" % (seed, warehouse))
        self.seed = seed
        self.skus = skus
        self.books = Books()
        self.ops = []
        self.count = 0  # events planned (a file counts its lines)
        self.n = 0

    def mid(self):
        self.n += 1
        return "s%d-%s-%d" % (self.seed, self.w, self.n)

    def op(self, kind, args, ids, expect, events=1, **extra):
        self.ops.append(dict(kind=kind, args=args, ids=ids, expect=expect, **extra))
        self.count += events

    def received(self, sku, loc, q):
        i = self.mid()
        self.books.add(sku, loc, q)
        self.op("delivery", ["publish", "received", "-w", self.w, "-s", sku, "-l", loc,
                             "-q", str(q), "--msg-id", i], [i], "stored")

    def file(self, lines, kind="file"):
        body = "".join(json.dumps(l) + "\n" for l in lines)
        self.op(kind, ["publish", "--file", "-"], [l["msg_id"] for l in lines], "stored",
                events=len(lines), stdin=body)

    def stock_up(self):
        """Phase 1: every product at A1 and A2."""
        lines = []
        for sku in self.skus:
            for loc, (lo, hi) in (("A1", (20, 40)), ("A2", (5, 15))):
                q = self.rng.randint(lo, hi)
                self.books.add(sku, loc, q)
                lines.append({"type": "stock.received", "warehouse": self.w, "sku": sku,
                              "location": loc, "quantity": q, "msg_id": self.mid()})
        self.file(lines, kind="stock")

    def random_op(self):
        rng, roll = self.rng, self.rng.random()
        stocked = self.books.stocked()
        if roll < 0.18 or not stocked:
            self.received(rng.choice(self.skus), rng.choice(LOCATIONS), rng.randint(5, 30))
        elif roll < 0.25:
            # A delivery note imported whole: deliveries and moves, as a WMS exports them.
            lines = []
            for _ in range(rng.randint(4, 12)):
                stocked = self.books.stocked()
                if rng.random() < 0.7 or not stocked:
                    sku, loc, q = rng.choice(self.skus), rng.choice(LOCATIONS), rng.randint(5, 30)
                    self.books.add(sku, loc, q)
                    lines.append({"type": "stock.received", "warehouse": self.w, "sku": sku,
                                  "location": loc, "quantity": q, "msg_id": self.mid()})
                else:
                    sku, src = rng.choice(stocked)
                    dst = rng.choice([l for l in LOCATIONS if l != src])
                    q = rng.randint(1, self.books.stock[(sku, src)])
                    self.books.take(sku, src, q)
                    self.books.add(sku, dst, q)
                    lines.append({"type": "stock.moved", "warehouse": self.w, "sku": sku,
                                  "from": src, "to": dst, "quantity": q, "msg_id": self.mid()})
            self.file(lines)
        elif roll < 0.38:
            sku, src = rng.choice(stocked)
            dst = rng.choice([l for l in LOCATIONS if l != src])
            q = rng.randint(1, self.books.stock[(sku, src)])
            self.books.take(sku, src, q)
            self.books.add(sku, dst, q)
            i = self.mid()
            self.op("move", ["publish", "moved", "-w", self.w, "-s", sku, "--from", src,
                             "--to", dst, "-q", str(q), "--msg-id", i], [i], "stored")
        else:
            i = self.mid()
            if rng.random() < 0.15:
                # Beyond what the location holds: refused, and nothing stored.
                sku, loc = rng.choice(self.skus), rng.choice(LOCATIONS + [DOCK])
                q = self.books.stock[(sku, loc)] + rng.randint(1, 5)
                self.op("sale", ["publish", "sold", "-w", self.w, "-s", sku, "-l", loc,
                                 "-q", str(q), "--msg-id", i], [i], "rejected", events=0)
            else:
                sku, loc = rng.choice(stocked)
                q = rng.randint(1, min(6, self.books.stock[(sku, loc)]))
                self.books.take(sku, loc, q)
                self.op("sale", ["publish", "sold", "-w", self.w, "-s", sku, "-l", loc,
                                 "-q", str(q), "--msg-id", i], [i], "stored")

    def ship(self, transfer):
        """The out leg of a transfer to another home; its quantity from the books."""
        stocked = self.books.stocked(at_least=2)
        if not stocked:
            self.received(self.rng.choice(self.skus), "A1", 20)
            stocked = self.books.stocked(at_least=2)
        sku, loc = self.rng.choice(stocked)
        q = self.rng.randint(2, min(10, self.books.stock[(sku, loc)]))
        self.books.take(sku, loc, q)
        transfer.update(sku=sku, sent=q)
        tid = transfer["id"]
        self.op("ship", ["transfer", "-s", sku, "--from-warehouse", self.w, "--from", loc,
                         "--to-warehouse", transfer["to"], "--to", DOCK, "-q", str(q),
                         "--transfer-id", tid], [tid + "-out"], "stored", transfer=tid)

    def receive(self, transfer, checks=False):
        """The arrival, with every flag (the out leg has not reached this server)."""
        tid, q = transfer["id"], transfer["received"]
        self.books.add(transfer["sku"], DOCK, q)
        args = ["transit", "receive", "--transfer-id", tid, "-w", self.w, "-s",
                transfer["sku"], "--from-warehouse", transfer["from"], "-l", DOCK]
        self.op("receipt", args + ["-q", str(q)], [tid + "-in"], "stored", transfer=tid)
        if checks:
            # Sent again (a retry after a lost reply): the one stored. Another receipt: refused.
            self.op("receipt again", args + ["-q", str(q)], [], "duplicate", events=0,
                    transfer=tid)
            self.op("second receipt", args + ["-q", str(q + 1)], [], "rejected", events=0,
                    transfer=tid)

    def run_until(self, limit, specials):
        """Random ops up to `limit` events, each special op (position, make) once the
        count reaches its position (a special before `limit` is made by then)."""
        while self.count < limit:
            if specials and specials[0][0] <= self.count:
                specials.pop(0)[1]()
            else:
                self.random_op()
        while specials and specials[0][0] < limit:
            specials.pop(0)[1]()


def make_plan(seed, events):
    """The clerks (each site's and the hub's), the transfers and the faults."""
    rng = random.Random("chaos-sites-%d" % seed)
    products = max(6, min(40, events // 50))
    skus = ["p%03d" % i for i in range(products)]
    clerks = {w: Clerk(seed, w, skus) for w in SITES}
    hub = Clerk(seed, HUB_WAREHOUSE, skus[:4])
    for c in list(clerks.values()) + [hub]:
        c.stock_up()
        c.stock_file = c.ops[0]["stdin"]
        c.phase1 = list(c.ops[0]["ids"])
        c.ops = []
        c.count = 0
    transfers = []

    def transfer(src, dst, short=False):
        t = dict(id="s%d-t%d" % (seed, len(transfers) + 1), **{"from": src}, to=dst,
                 short=short)
        transfers.append(t)
        return t

    per_way = max(1, events // 400)
    first, second = {w: [] for w in SITES}, {w: [] for w in SITES}
    for src, dst in ((SITES[0], SITES[1]), (SITES[1], SITES[0])):
        for k in range(per_way):
            t = transfer(src, dst, short=(src == SITES[1] and k == 0))
            first[src].append((rng.uniform(0.1, 0.45) * events,
                               lambda c=clerks[src], t=t: c.ship(t)))
            second[dst].append((rng.uniform(0.55, 0.9) * events, t))
    # A site ships to the hub's warehouse; the hub ships to a site.
    to_hub = transfer(SITES[1], HUB_WAREHOUSE)
    first[SITES[1]].append((rng.uniform(0.1, 0.45) * events,
                            lambda: clerks[SITES[1]].ship(to_hub)))
    from_hub = transfer(HUB_WAREHOUSE, SITES[0])
    second[SITES[0]].append((rng.uniform(0.55, 0.9) * events, from_hub))
    kills = {w: (rng.uniform(0.3, 0.7) * events, rng.uniform(0.5, 2.0)) for w in SITES}
    for w in SITES:
        c = clerks[w]
        at, down = kills[w]
        specials = sorted(first[w] + [(at, lambda c=c, down=down: c.op(
            "kill", None, [], None, events=0, down_s=down))], key=lambda s: s[0])
        c.run_until(events // 2, specials)
        c.pending = specials
    # The hub's clerk: sales and deliveries in nyc1, the shipment to ams1, the receipt
    # from ber1 (after ber1 shipped it).
    hub_events = max(10, events // 20)
    hub_specials = [(hub_events / 3, lambda: hub.ship(from_hub))]
    hub.run_until(hub_events / 2, hub_specials)
    for t in transfers:
        t["received"] = t["sent"] - 1 if t["short"] else t["sent"]
    hub.receive(to_hub)
    hub.run_until(hub_events, [])
    for w in SITES:
        c = clerks[w]
        receipts = sorted(second[w], key=lambda s: s[0])
        specials = sorted(c.pending + [(pos, lambda c=c, t=t, k=k: c.receive(t, checks=k == 0))
                                       for k, (pos, t) in enumerate(receipts)],
                          key=lambda s: s[0])
        c.run_until(events, specials)
        while specials:
            specials.pop(0)[1]()
    return skus, clerks, hub, transfers


# ---------------------------------------------------------------------------------------
# Running it.

class Run:
    def __init__(self, args, deadline):
        self.args, self.deadline = args, deadline
        self.failures, self.stats, self.passed = [], {}, []
        self.checked = 0  # failures when the last check was marked
        self.tally = defaultdict(lambda: defaultdict(int))  # home -> what happened -> count
        self.lock = threading.Lock()
        self.shipped = defaultdict(threading.Event)  # set once the ship op settled
        self.ship_acked = {}
        self.acked = {}  # home -> msg ids acknowledged, in order
        self.refused = defaultdict(list)
        self.stopping = threading.Event()

    def fail(self, text):
        with self.lock:
            self.failures.append(text)

    def count(self, home, key, n=1):
        with self.lock:
            self.tally[home][key] += n

    def check(self, name):
        """Marks a check: passed when nothing failed since the last one."""
        with self.lock:
            if len(self.failures) == self.checked:
                self.passed.append(name)
            self.checked = len(self.failures)

    def settle(self, server, op):
        """Runs an op's command until it settles; exit 1 is tried again with the same ids."""
        while True:
            out = server.cli("cli", "--json", *op["args"], stdin=op.get("stdin"))
            if out.returncode != 1 or time.time() > self.deadline or self.stopping.is_set():
                return out
            self.count(server.name, "retried")
            time.sleep(0.2)

    def clerk(self, server, clerk, killed):
        acked = self.acked.setdefault(clerk.w, list(clerk.phase1))
        for op in clerk.ops:
            if self.stopping.is_set():
                return
            if op["kind"] == "kill":
                killed.put(op["down_s"])
                continue
            if op["kind"] == "receipt":
                t = op["transfer"]
                self.shipped[t].wait(max(0.0, self.deadline - time.time()))
                if not self.ship_acked.get(t):
                    self.fail("%s: transfer %s was not acknowledged as shipped: not received"
                              % (clerk.w, t))
                    continue
            try:
                self.do(server, clerk, op, acked)
            finally:
                if op["kind"] == "ship":
                    self.shipped[op["transfer"]].set()

    def do(self, server, clerk, op, acked):
        """One op, settled, its outcome checked against the books."""
        out = self.settle(server, op)
        said = "stockwire " + " ".join(op["args"])
        last = out.stdout.strip().splitlines()[-1:] if out.stdout.strip() else []
        try:
            answer = json.loads(last[0]) if last else {}
        except ValueError:
            answer = {}
        if op["expect"] == "rejected":
            if out.returncode == 3:
                if op["kind"] == "sale":
                    self.refused[clerk.w].append(op["args"][-1])
                self.count(clerk.w, op["kind"] + " refused")
            else:
                self.fail("%s: %s must be refused (exit 3), got exit %d: %s %s"
                          % (clerk.w, said, out.returncode, out.stdout.strip(),
                             out.stderr.strip()))
            return
        if out.returncode != 0:
            self.fail("%s: %s failed (exit %d): %s" % (clerk.w, said, out.returncode,
                                                       out.stderr.strip()[-500:]))
            return
        if op["expect"] == "duplicate":
            if answer.get("duplicate") is not True:
                self.fail("%s: %s sent again must be a duplicate, got %s"
                          % (clerk.w, said, out.stdout.strip()))
            else:
                self.count(clerk.w, "receipt again")
            return
        acked.extend(op["ids"])
        self.count(clerk.w, op["kind"])
        self.count(clerk.w, "events", len(op["ids"]))
        if op["kind"] == "file":
            self.count(clerk.w, "file events", len(op["ids"]))
        if op["kind"] == "ship":
            self.ship_acked[op["transfer"]] = True

    def faults(self, site, killed):
        """Kills the site's server when its clerk reaches the kill op; starts it again."""
        while not self.stopping.is_set():
            try:
                down = killed.get(timeout=0.2)
            except queue.Empty:
                continue
            if down is None:
                return
            t0 = time.time()
            site.kill_server()
            time.sleep(down)
            try:
                site.start_server()
            except SystemExit as e:
                self.fail(str(e.code))
                return
            self.count(site.warehouse, "kills")
            self.count(site.warehouse, "down ms", int((time.time() - t0) * 1000))

    def monitor(self, hub, readings, stop):
        """`site list` at the hub every half second while the links are cut."""
        while not stop.is_set():
            out = hub.cli("cli", "--json", "site", "list", "--site-offline-s",
                          str(self.args.site_offline_s))
            if out.returncode == 0:
                states = {s["warehouse"]: s for s in
                          (json.loads(l) for l in out.stdout.splitlines() if l.strip())}
                readings.append((time.time(), states))
            stop.wait(0.5)


def site_states(hub, offline_s):
    out = hub.cli("cli", "--json", "site", "list", "--site-offline-s", str(offline_s))
    if out.returncode != 0:
        return {}
    return {s["warehouse"]: s for s in (json.loads(l) for l in out.stdout.splitlines()
                                        if l.strip())}


def log_of(server, warehouse, skus):
    """Every event of `warehouse` on `server`, in its stream order (history of each
    product, merged by sequence)."""
    events = []
    for sku in skus:
        events += server.json_lines("cli", "history", "-w", warehouse, "-s", sku)
    events.sort(key=lambda e: e["seq"])
    return events


def stock_of(server, warehouse):
    """{sku: {location: units}} of the stock view, products with stock only."""
    view = {}
    for v in server.json_lines("cli", "stock", "-w", warehouse):
        if v.get("locations"):
            view[v["sku"]] = {l: q for l, q in v["locations"].items() if q}
    return view


def main(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/chaos --sites", description=__doc__.split("\n")[0])
    ap.add_argument("--sites", action="store_true", help="this drill (scripts/chaos passes it on)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=2_000,
                    help="events each site records while its link is cut")
    ap.add_argument("--site-offline-s", type=int, default=3,
                    help="`site list --site-offline-s` at the hub during the drill")
    ap.add_argument("--deadline-s", type=float, default=600, help="fail if not done by then")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the stores and logs")
    args = ap.parse_args(argv)
    if args.events < 20:
        ap.error("--events: at least 20")
    if args.site_offline_s < 1:
        ap.error("--site-offline-s: at least 1")
    # Stopped from outside: still stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.time()
    deadline = started + args.deadline_s
    work = tempfile.mkdtemp(prefix="stockwire-chaos-sites-")
    run = Run(args, deadline)
    hub, sites, relays = None, {}, {}
    timings = {"first event": {}, "caught up": {}}
    skus, clerks, hub_clerk, transfers = make_plan(args.seed, args.events)

    def left():
        return max(1.0, deadline - time.time())

    try:
        # The hub, then each site behind its relay, set up as scripts/site-up does.
        hub = Hub(args.root, args.bin_dir, work)
        hub.name = "hub"
        hub.start_server()
        hub.ok("admin", "setup")
        for w in SITES:
            relays[w] = Relay(args.root, work, w, hub.leaf_port)
            sites[w] = Site(args.root, args.bin_dir, work, w, relays[w].port)
            sites[w].name = w
            sites[w].start_server()
        for w in SITES:
            sites[w].ok("admin", "setup", "--site")
            hub.ok("admin", "site", "add", w)
        conf = hub.ok("admin", "site", "conf")
        with open(os.path.join(work, "refused-events.conf"), "w") as f:
            f.write(conf)
        hub.reload()
        for name in SERVICES:
            hub.start_service(name)
            for w in SITES:
                sites[w].start_service(name)

        def online():
            states = site_states(hub, args.site_offline_s)
            return all(states.get(w, {}).get("online") for w in SITES)
        until(online, left(), "the sites never showed online at the hub", pause=0.3)

        # Link up: the stock reaches the hub; the hub refuses a site's events itself.
        for w in SITES + [HUB_WAREHOUSE]:
            c, server = clerks.get(w, hub_clerk), sites.get(w, hub)
            out = server.cli("cli", "--json", "publish", "--file", "-", stdin=c.stock_file)
            if out.returncode != 0:
                raise SystemExit("stocking %s failed (exit %d): %s"
                                 % (w, out.returncode, out.stderr.strip()))
        forbidden = ["publish", "received", "-w", SITES[0], "-s", skus[0], "-l", "A1", "-q", "1",
                     "--msg-id", "s%d-forbidden" % args.seed]
        out = hub.cli("cli", *forbidden)
        if out.returncode != 2:
            run.fail("at the hub, `stockwire %s` must exit 2, got %d: %s"
                     % (" ".join(forbidden), out.returncode, out.stderr.strip()))
        subject = "warehouse.%s.product.%s.received" % (SITES[0], skus[0])
        answers = raw_publish(hub.port, "cli", subject)
        if not any("Permissions Violation for Publish" in a for a in answers):
            run.fail("at the hub, a raw publish to %s was not refused: %s" % (subject, answers))
        run.check("at the hub, a site's event is refused: by the CLI (exit 2) and raw "
                  "(permissions violation)")

        def hub_has_stock():
            states = site_states(hub, args.site_offline_s)
            return all(states.get(w, {}).get("events") == len(clerks[w].phase1) for w in SITES)
        until(hub_has_stock, left(), "the hub did not get the sites' stock with the links up",
              pause=0.2)

        # The outage: both links cut, every clerk at work, each site server killed once.
        cut_at = time.time()
        for w in SITES:
            relays[w].cut()
        readings, stop_monitor = [], threading.Event()
        monitor = threading.Thread(target=run.monitor, args=(hub, readings, stop_monitor),
                                   daemon=True)
        monitor.start()
        killed = {w: queue.Queue() for w in SITES}
        clerking = [threading.Thread(target=run.clerk, args=(sites[w], clerks[w], killed[w]),
                                     daemon=True) for w in SITES]
        clerking.append(threading.Thread(target=run.clerk, args=(hub, hub_clerk, queue.Queue()),
                                         daemon=True))
        faults = [threading.Thread(target=run.faults, args=(sites[w], killed[w]), daemon=True)
                  for w in SITES]
        for t in clerking + faults:
            t.start()
        for t in clerking:
            t.join(left())
        timings["recording"] = time.time() - cut_at
        for w in SITES:
            killed[w].put(None)
        for t in faults:
            t.join(left())
        if any(t.is_alive() for t in clerking + faults):
            raise SystemExit("the clerks did not finish by the deadline")
        for w in SITES:
            if run.tally[w]["kills"] != 1:
                run.fail("%s: its server was SIGKILLed and restarted %d times, not once"
                         % (w, run.tally[w]["kills"]))
        run.check("every command answered as the books say (stored; beyond the stock refused "
                  "with exit 3; exit 1 tried again), each site server SIGKILLed and back once")

        def seen_offline():
            return all(any(not r[w]["online"] for _, r in readings if w in r) for w in SITES)
        until(seen_offline, left(),
              "site list at the hub never showed the sites offline during the outage", pause=0.2)
        stop_monitor.set()
        monitor.join(10)
        for w in SITES:
            mine = [r[w] for _, r in readings if w in r]
            silent = [s.get("silent_ms") or 0 for s in mine]
            crossed = sorted({s["events"] for s in mine} - {len(clerks[w].phase1)})
            if crossed:
                run.fail("%s: the hub had %s events of it during the outage, not %d: something "
                         "crossed the cut link" % (w, crossed, len(clerks[w].phase1)))
            if silent[-1] <= silent[0] or mine[-1]["online"]:
                run.fail("%s: site list at the hub did not show the outage: %s" % (w, mine[-1]))
            run.stats["%s: site list during the outage" % w] = (
                "offline in %d of %d readings, last contact up to %.1f s ago, %d events at "
                "the hub throughout" % (sum(1 for s in mine if not s["online"]), len(mine),
                                        max(silent) / 1000, len(clerks[w].phase1)))

        # The links come back: the hub catches up.
        restored = time.time()
        timings["outage"] = restored - cut_at
        for w in SITES:
            relays[w].restore()
        expected = {w: len(run.acked[w]) for w in SITES}

        last = {}

        first, done = timings["first event"], timings["caught up"]

        def caught_up():
            states = last["states"] = site_states(hub, args.site_offline_s)
            now = time.time() - restored
            for w in SITES:
                events = states.get(w, {}).get("events", 0)
                if w not in first and events > len(clerks[w].phase1):
                    first[w] = now
                # At least what was acknowledged (more is for the checks to name).
                if w not in done and events >= expected[w] and states[w].get("lag") == 0:
                    done[w] = now
            return len(done) == len(SITES)
        until(caught_up, left(), lambda: "the hub did not catch up by the deadline: "
              "acknowledged %s, site list at the hub says %s" % (expected, last.get("states")),
              pause=0.1)
        timings["catch-up"] = time.time() - restored
        until(online, left(), "site list did not show the sites online again", pause=0.3)
        run.check("site list at the hub: both sites offline during the outage (last contact "
                  "growing, none of their new events), online after")
        check(run, hub, sites, clerks, hub_clerk, skus, transfers, deadline)
        return report(args, run, clerks, hub_clerk, timings, started)
    except BaseException as stopped:
        if isinstance(stopped, SystemExit) and isinstance(stopped.code, str):
            # A wait that ran out, a command that failed: reported like a failed check.
            run.fail(stopped.code)
            return report(args, run, clerks, hub_clerk, timings, started)
        run.fail("stopped early: %r" % (stopped,))
        raise
    finally:
        run.stopping.set()
        with RUNNING_LOCK:
            for proc in RUNNING:
                if proc.poll() is None:
                    proc.kill()
        for server in list(sites.values()) + ([hub] if hub else []):
            server.stop()
        for relay in relays.values():
            relay.stop()
        if run.failures:
            logs = [os.path.join(work, n + ".log") for n in ["nats-server"] + SERVICES]
            for w in SITES:
                logs += [os.path.join(work, "site-" + w, n + ".log")
                         for n in ["nats-server"] + SERVICES]
                logs.append(os.path.join(work, "relay-%s.log" % w))
            for path in logs:
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        tail = f.readlines()[-15:]
                    print("--- %s (last lines)\n%s" % (os.path.relpath(path, work), "".join(tail)),
                          file=sys.stderr)
        if args.keep or run.failures:
            print("stores and logs kept in %s" % work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def check(run, hub, sites, clerks, hub_clerk, skus, transfers, deadline):
    """The books against the servers, once the hub has caught up."""
    # Each site's log: the clerk's books, the site's stream and the hub's copy, id by id.
    for w in SITES:
        at_site = log_of(sites[w], w, skus)
        at_hub = log_of(hub, w, skus)
        books = run.acked[w]
        site_ids = [e["msg_id"] for e in at_site]
        hub_ids = [e["msg_id"] for e in at_hub]
        counts = defaultdict(int)
        for i in hub_ids:
            counts[i] += 1
        twice = [i for i, n in counts.items() if n > 1]
        if twice:
            run.fail("%s: %d ids stored more than once at the hub, e.g. %s"
                     % (w, len(twice), twice[:3]))
        acked = set(books)
        missing = [i for i in books if i not in counts]
        if missing:
            run.fail("%s: %d acknowledged events missing at the hub, e.g. %s"
                     % (w, len(missing), missing[:3]))
        extra = [i for i in counts if i not in acked]
        if extra:
            run.fail("%s: %d events at the hub never acknowledged, e.g. %s"
                     % (w, len(extra), extra[:3]))
        stored = set(site_ids) | set(hub_ids)
        refused = [i for i in run.refused[w] if i in stored]
        if refused:
            run.fail("%s: refused sales stored: %s" % (w, refused[:5]))
        if site_ids != books:
            run.fail("%s: the site's log is not the clerk's books in order (%d events, %d "
                     "acknowledged; first difference at %s)"
                     % (w, len(site_ids), len(books), first_difference(site_ids, books)))
        if hub_ids != site_ids:
            run.fail("%s: the hub's copy is not in the site's order (first difference at %s)"
                     % (w, first_difference(hub_ids, site_ids)))
        unsourced = [e["msg_id"] for e in at_hub if e.get("sourced") is not True]
        if unsourced:
            run.fail("%s: %d events at the hub not stored by sourcing (no \"sourced\": true), "
                     "e.g. %s" % (w, len(unsourced), unsourced[:3]))
        run.stats["%s: events at the hub" % w] = "%d (at the site %d, acknowledged %d)" % (
            len(hub_ids), len(site_ids), len(books))
    run.check("every acknowledged event of a site at the hub exactly once, in the site's "
              "order, by sourcing; no refused one anywhere")
    own = log_of(hub, HUB_WAREHOUSE, skus)
    own_ids = [e["msg_id"] for e in own]
    if own_ids != run.acked[HUB_WAREHOUSE]:
        run.fail("%s: the hub's log is not its clerk's books (first difference at %s)"
                 % (HUB_WAREHOUSE, first_difference(own_ids, run.acked[HUB_WAREHOUSE])))
    if any(e.get("sourced") for e in own):
        run.fail("%s: an event of the hub's own warehouse is marked sourced" % HUB_WAREHOUSE)
    run.check("the hub's own warehouse %s: its clerk's books, nothing sourced" % HUB_WAREHOUSE)

    # Stock: each site's view is its books, and the hub's view of it the same.
    for w in SITES:
        books = clerks[w].books.view()
        view, end = {}, min(deadline, time.time() + 30)
        while True:
            view = stock_of(sites[w], w)
            if view == books or time.time() > end:
                break
            time.sleep(0.3)
        if view != books:
            run.fail("%s: the site's stock view differs from the books (view, books): %s"
                     % (w, differences(view, books)))
        hub_view = {}
        while True:
            hub_view = stock_of(hub, w)
            if hub_view == view or time.time() > deadline:
                break
            time.sleep(0.3)
        if hub_view != view:
            run.fail("%s: the hub's stock view differs from the site's (hub, site): %s"
                     % (w, differences(hub_view, view)))
    hub_books = hub_clerk.books.view()
    own_view = {}
    while True:
        own_view = stock_of(hub, HUB_WAREHOUSE)
        if own_view == hub_books or time.time() > deadline:
            break
        time.sleep(0.3)
    if own_view != hub_books:
        run.fail("%s: the hub's stock view differs from the books (view, books): %s"
                 % (HUB_WAREHOUSE, differences(own_view, hub_books)))
    run.check("each site's stock view = its books = the hub's view of that warehouse")

    # Transfers: closed at the hub, received whole or short by what was lost.
    want = {t["id"]: ("received" if t["received"] == t["sent"] else "short: lost in transit",
                      t["sent"], t["received"]) for t in transfers}
    got = {}
    while True:
        got = {t["transfer_id"]: (t["state"], t["sent"], t["received"])
               for t in hub.json_lines("cli", "transit", "list", "--all")}
        if all(got.get(i) == v for i, v in want.items()) or time.time() > deadline:
            break
        time.sleep(0.3)
    wrong = {i: (got.get(i), v) for i, v in want.items() if got.get(i) != v}
    if wrong:
        run.fail("transfers not closed at the hub as sent and received (got, want): %s" % wrong)
    ways = defaultdict(int)
    for t in transfers:
        ways["%s->%s" % (t["from"], t["to"])] += 1
    run.stats["transfers, closed at the hub"] = "%d (%s), %d received short" % (
        len(want), ", ".join("%d %s" % (n, way) for way, n in sorted(ways.items())),
        sum(1 for t in transfers if t["received"] != t["sent"]))
    run.check("every transfer closed in the hub's in-transit view (received, or short: lost "
              "in transit)")

    out = hub.cli("cli", "verify")
    if out.returncode != 0:
        run.fail("verify at the hub (exit %d): %s%s" % (out.returncode, out.stdout.strip()[-2000:],
                                                      out.stderr.strip()))
    for server in [hub] + [sites[w] for w in SITES]:
        out = server.cli("cli", "--json", "status")
        if out.returncode == 0:
            dead = json.loads(out.stdout.splitlines()[-1]).get("dead_letters")
            if dead:
                run.fail("%s: %s dead letters" % (server.name, dead))
        else:
            run.fail("%s: status failed (exit %d): %s" % (server.name, out.returncode,
                                                          out.stderr.strip()))
        with server.lock:
            exited = {n: p.returncode for n, p in server.services.items() if p.poll() is not None}
        for name, code in sorted(exited.items()):
            run.fail("%s: %s exited by itself (code %s)" % (server.name, name, code))
    run.check("verify clean at the hub; no dead letters; every service still running")


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "#%d: %s vs %s" % (i, x, y)
    return "#%d: one is longer (%d vs %d)" % (min(len(a), len(b)), len(a), len(b))


def differences(a, b):
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "%d products, e.g. %s" % (len(keys), [(k, a.get(k), b.get(k)) for k in keys[:3]])


def report(args, run, clerks, hub_clerk, timings, started):
    rows = [("seed", args.seed),
            ("homes", "the hub (its warehouse %s) and sites %s, each behind its own relay"
             % (HUB_WAREHOUSE, " and ".join(SITES))),
            ("events per site in the outage", args.events)]
    for home in SITES + [HUB_WAREHOUSE]:
        t = run.tally.get(home)
        if not t:
            continue
        said = ["%d events acknowledged: %d deliveries, %d files (%d events), %d moves, %d sales, "
                "%d transfers shipped, %d received"
                % (t["events"], t["delivery"], t["file"], t["file events"], t["move"], t["sale"],
                   t["ship"], t["receipt"])]
        said.append("refused with exit 3: %d sales beyond the stock" % t["sale refused"]
                    + (", %d second receipt" % t["second receipt refused"]
                       if t["second receipt refused"] else ""))
        if t["receipt again"]:
            said.append("%d receipt sent again: already received" % t["receipt again"])
        if t["kills"]:
            said.append("server SIGKILLed, back after %.1f s" % (t["down ms"] / 1000))
        said.append("%d commands tried again after exit 1"
                    % run.tally[home if home in SITES else "hub"]["retried"])
        rows.append(("%s in the outage" % home, "; ".join(said)))
    rows += sorted(run.stats.items())
    if "outage" in timings:
        rows.append(("links cut for", "%.1f s (recording took %.1f s)"
                     % (timings["outage"], timings["recording"])))
    if "catch-up" in timings:
        said = []
        for w in SITES:
            behind = len(run.acked[w]) - len(clerks[w].phase1)
            first = timings["first event"].get(w, 0.0)
            done = timings["caught up"][w]
            said.append("%s %d events, the first after %.1f s, all after %.1f s (%.0f/s)"
                        % (w, behind, first, done, behind / max(done - first, 0.1)))
        rows.append(("hub caught up after the links were back",
                     "%.1f s: %s (before the first: the leaf link reconnecting, then the "
                     "hub's source waiting out its retry backoff)"
                     % (timings["catch-up"], "; ".join(said))))
    rows.append(("whole drill", "%.1f s" % (time.time() - started)))
    for c in run.passed:
        rows.append(("check passed", c))
    rows.append(("result", "FAILED" if run.failures else
                 "ok: %d checks passed" % len(run.passed)))
    width = max(len(str(k)) for k, _ in rows)
    print("chaos drill --sites")
    for k, v in rows:
        print("  %-*s  %s" % (width, k, v))
    sys.stdout.flush()
    for f in run.failures:
        print("chaos --sites: " + f, file=sys.stderr)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
