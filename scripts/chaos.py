"""The fault drill behind scripts/chaos: the whole stack under fire, then the books checked.

Starts nats-server (the repo's nats.conf: users, fsync always) on free ports with a fresh
store, the four services as their own users, and several publishers at once, each
publishing its share of the events in small files through `stockwire publish --file`.
Beside them, on products of their own (stocked first through the CLI, in two
warehouses), two clerks run checked commands: `stockwire publish sold` and `stockwire
transfer` between the warehouses, each with its own msg id / transfer id, tried again with
the same id after exit 1 until the deadline; exit 0 is an acknowledgement, exit 3 a refusal
(not enough stock, or contended). Meanwhile it kills services with SIGKILL or SIGTERM (which
must stop them within 2 s, exit 0) at random moments and restarts them, and kills and
restarts nats-server once, sending one service SIGTERM while the server is down (it must
not wait on a server that is gone). Then it waits for the views to catch up and checks what a user
would: `stockwire verify` is clean; the log holds exactly what was acknowledged (the
generator's events, the stock, and every acknowledged checked command, each once); each of
the generator's products has the stock of its books; no event is a dead letter; on the
checked products (their history read back with `stockwire history`) no msg id is stored
twice, an acknowledged sale or transfer is stored and a refused one is not, every transfer
has both legs or neither, no location is ever below zero, and the stock view equals what
was received minus the acknowledged sales, transfers counted on both sides; and each
product's low-stock alerts alternate low/recovered with no repeat and end in agreement
with its final stock. The events, the clerks' commands and the schedule of faults follow
from --seed; exit 0 when every check passes, 1 otherwise.

With --cluster: three nodes (routes on loopback, fsync always, the repo's users), every
stream R3, two instances of each service (one active, one standing by), and instead of
one server restart, three node faults: SIGKILL of the node leading INVENTORY, then of the
one leading KV_stock, then of a random node, each started again after 3 s; while each is
down, both instances of one service (a different one each time) get SIGTERM. At the end
every stream (the buckets' too) must also be at the same last sequence on all three
nodes, as each node's monitoring endpoint reports its own replica.

With --partitions: stock-projector runs as 3 partitions (`--partition I --partitions 3`)
plus a standby of partition 0. A third of the way in, the active instance of partition 0
gets SIGKILL (the standby must take over); halfway, the active instance of partition 1
gets SIGTERM; three quarters in, while publishing goes on, every instance is stopped and
4 partitions are started in their place (each new partition starts from the lowest
checkpoint of the 3). At the end the view must also be split in 4, each of the 4
checkpoints at the end of the log, and each partition served by an active instance.

With --sites: the edge-sites drill, in scripts/chaos_sites.py (its own flags: --seed,
--events per site, default 2,000, --site-offline-s, --deadline-s, --keep). A hub and two
sites (ams1, ber1) on loopback, a relay (scripts/relay.py) in each leaf link; both links
are cut while each site records deliveries, checked sales (some refused beyond the stock),
moves and transfers to the other site, and each site's server is SIGKILLed and restarted
once; then the links are restored and the hub must hold every acknowledged site event
once, in the site's order, by sourcing, the same stock as each site, every transfer closed,
and `site list` must have shown the outage.
"""

import argparse
import json
import socket
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict

SERVICES = ["stock-projector", "low-stock-watcher", "velocity-projector", "velocity-watcher"]
THRESHOLD = 20
# The checked products: apart from the generator's, so that its books stay exact. Each is
# stocked in both warehouses first, then only sold and transferred by checked commands.
CHECKED_WAREHOUSES = ["ams1", "ber1"]
CLERKS = 2


PICKED_PORTS = set()


def free_port():
    """A free port on loopback below the kernel's range for outgoing connections: a port
    from that range (what binding port 0 gives) may be taken by a client's connection
    while the server that listens on it is down, and the server cannot start again."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while low > 10100:
        port = random.SystemRandom().randrange(10000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in PICKED_PORTS:
            PICKED_PORTS.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def password(user):
    return os.environ["STOCKWIRE_%s_PASSWORD" % user.replace("-", "_").upper()]


class Stack:
    """nats-server and the services, as processes this drill owns."""

    def __init__(self, root, bin_dir, work, cluster=False):
        self.root, self.bin_dir, self.work = root, bin_dir, work
        self.server = None
        self.port = None
        self.services = {}
        self.lock = threading.Lock()
        self.nodes = []
        if cluster:
            self.write_cluster()
        self.conf = os.path.join(work, "nats.conf")
        with open(os.path.join(root, "nats.conf")) as f:
            text = f.read()
        store = os.path.join(work, "store")
        text = re.sub(r"store_dir:.*", "store_dir: %s" % json.dumps(store), text)
        # The leaf node listener too, on a port of its own (a running scripts/up has 7422).
        text = re.sub(r"(\n\s+listen: )127\.0\.0\.1:7422", r"\g<1>127.0.0.1:%d" % free_port(), text)
        with open(self.conf, "w") as f:
            f.write(text)
        # nats.conf includes the users from ./accounts.conf, next to the including file.
        shutil.copy(os.path.join(root, "accounts.conf"), work)
        shutil.copy(os.path.join(root, "refused-events.conf"), work)

    def write_cluster(self):
        """Three node configs with free ports, each including the repo's users."""
        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
        for i, (client, route, http) in enumerate(ports):
            name = "n%d" % (i + 1)
            routes = ", ".join('"nats-route://127.0.0.1:%d"' % p[1]
                               for j, p in enumerate(ports) if j != i)
            conf = os.path.join(self.work, name + ".conf")
            with open(conf, "w") as f:
                f.write("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n"
                        "max_payload: 1MB\n"
                        "jetstream {\n  store_dir: %s\n  sync_interval: always\n}\n"
                        "cluster {\n  name: chaos\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n"
                        "include ./accounts.conf\n"
                        % (name, client, http, json.dumps(os.path.join(self.work, name)),
                           route, routes))
            self.nodes.append({"name": name, "port": client, "http": http, "conf": conf,
                               "proc": None})

    def url(self):
        if self.nodes:
            return ",".join("nats://127.0.0.1:%d" % n["port"] for n in self.nodes)
        return "nats://127.0.0.1:%d" % self.port

    def env(self, user):
        env = dict(os.environ)
        env.update(NATS_URL=self.url(), NATS_USER=user,
                   NATS_PASSWORD=password(user), RUST_LOG=env.get("RUST_LOG", "warn"))
        return env

    def start_node(self, i):
        node = self.nodes[i]
        log = open(os.path.join(self.work, node["name"] + ".log"), "a")
        node["proc"] = subprocess.Popen(
            [os.path.join(self.root, ".tools/bin/nats-server"), "-c", node["conf"]],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", node["port"]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("chaos: node %s did not start; see %s/%s.log"
                         % (node["name"], self.work, node["name"]))

    def kill_node(self, i):
        proc = self.nodes[i]["proc"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def node_leading(self, what):
        """The index of the node leading a stream or bucket, from `stockwire status`
        (None when status cannot tell in a few tries: the cluster is busy)."""
        for _ in range(10):
            out = self.cli("cli", "status", "--json")
            if out.returncode == 0:
                status = json.loads(out.stdout)
                entry = status["streams"].get(what) or status["buckets"].get(what) or {}
                for i, node in enumerate(self.nodes):
                    if node["name"] == entry.get("leader"):
                        return i
            time.sleep(0.5)
        return None

    def replica_ends(self):
        """Per stream, the last sequence of its replica on each node, as each node's
        monitoring endpoint (/jsz) reports its own copy."""
        ends = defaultdict(dict)
        for node in self.nodes:
            url = "http://127.0.0.1:%d/jsz?accounts=true&streams=true" % node["http"]
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    jsz = json.load(answer)
            except (OSError, ValueError):
                continue
            for account in jsz.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    ends[stream["name"]][node["name"]] = stream["state"]["last_seq"]
        return ends

    def start_server(self):
        ports = os.path.join(self.work, "ports")
        shutil.rmtree(ports, ignore_errors=True)
        os.makedirs(ports)
        log = open(os.path.join(self.work, "nats-server.log"), "a")
        self.port = self.port or free_port()
        port = str(self.port)
        self.server = subprocess.Popen(
            [os.path.join(self.root, ".tools/bin/nats-server"), "-c", self.conf, "-p", port,
             "-m", "-1", "--ports_file_dir", ports],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            for name in os.listdir(ports):
                with open(os.path.join(ports, name)) as f:
                    try:
                        url = json.load(f)["nats"][0]
                    except (ValueError, KeyError, IndexError):
                        continue
                self.port = int(url.rsplit(":", 1)[1])
                return
            time.sleep(0.05)
        raise SystemExit("chaos: nats-server did not start; see %s/nats-server.log" % self.work)

    def kill_server(self):
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def start_service(self, name):
        """`name` is a service, `service#k` for its k-th instance, or `service#pIofN...`
        for an instance of partition I of N (its instance id is the name)."""
        binary = name.split("#")[0]
        env = self.env(binary)
        part = re.match(r"[^#]+#p(\d+)of(\d+)", name)
        if part:
            env.update(STOCKWIRE_PARTITION=part.group(1), STOCKWIRE_PARTITIONS=part.group(2),
                       STOCKWIRE_INSTANCE_ID=name.replace("#", "-"))
        log = open(os.path.join(self.work, name.replace("#", "-") + ".log"), "a")
        proc = subprocess.Popen([os.path.join(self.bin_dir, binary)], env=env,
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        with self.lock:
            self.services[name] = proc

    def kill_service(self, name):
        with self.lock:
            proc = self.services[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_service(self, name):
        """SIGTERM; how long the service took to exit, and its exit code."""
        with self.lock:
            proc = self.services[name]
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        return time.time() - sent, code

    def cli(self, user, *args, stdin=None):
        return subprocess.run([os.path.join(self.bin_dir, "stockwire"), *args],
                              env=self.env(user), input=stdin, capture_output=True, text=True)

    def ok(self, user, *args):
        out = self.cli(user, *args)
        if out.returncode != 0:
            raise SystemExit("chaos: stockwire %s failed (exit %d): %s"
                             % (" ".join(args), out.returncode, out.stderr.strip()))
        return out.stdout

    def active_instance(self, service, partition, partitions):
        """The instance id of the active instance of a partition, from `stockwire status`."""
        for _ in range(20):
            out = self.cli("cli", "status", "--json")
            if out.returncode == 0:
                for listed in json.loads(out.stdout)["instances"]:
                    stats = listed
                    if (listed["service"] == service and stats["active"]
                            and stats["partition"] == partition
                            and stats["partitions"] == partitions):
                        return stats["instance"]
            time.sleep(0.5)
        return None

    def stop(self):
        with self.lock:
            procs = list(self.services.values())
        nodes = [n["proc"] for n in self.nodes if n["proc"]]
        for proc in procs + ([self.server] if self.server else []) + nodes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def generate(rng, seed, events, products, publishers):
    """Per publisher, its events in order; each product belongs to one publisher."""
    warehouses = ["ams1", "ber1", "par1", "rtm1"]
    names = [(warehouses[i % len(warehouses)], "sku%04d" % i) for i in range(products)]
    owner = {p: i % publishers for i, p in enumerate(names)}
    stock = defaultdict(lambda: defaultdict(int))
    out = [[] for _ in range(publishers)]
    for n in range(events):
        wh, sku = product = rng.choice(names)
        here = stock[product]
        total = sum(here.values())
        loc = rng.choice(["A1", "A2", "B1"])
        roll = rng.random()
        line = {"warehouse": wh, "sku": sku, "msg_id": "chaos-%d-%d" % (seed, n)}
        if total == 0 or roll < 0.35:
            line.update(type="stock.received", location=loc, quantity=rng.randint(5, 40))
            here[loc] += line["quantity"]
        elif roll < 0.85:
            loc = rng.choice([l for l, q in here.items() if q > 0])
            line.update(type="stock.sold", location=loc, quantity=rng.randint(1, here[loc]))
            here[loc] -= line["quantity"]
        elif roll < 0.92:
            src = rng.choice([l for l, q in here.items() if q > 0])
            dst = rng.choice([l for l in ["A1", "A2", "B1"] if l != src])
            line.update(type="stock.moved", **{"from": src, "to": dst},
                        quantity=rng.randint(1, here[src]))
            here[src] -= line["quantity"]
            here[dst] += line["quantity"]
        elif roll < 0.96:
            src = rng.choice([l for l, q in here.items() if q > 0])
            line.update(type="stock.destroyed", location=src, quantity=1, reason="damaged")
            here[src] -= 1
        else:
            line.update(type="stock.corrected", location=loc, quantity=rng.randint(0, 30))
            here[loc] = line["quantity"]
        out[owner[product]].append(json.dumps(line))
    final = {"%s.%s" % p: sum(q.values()) for p, q in stock.items()}
    return out, final


def publisher(stack, lines, chunk, pace_s, deadline, stats, failures):
    for start in range(0, len(lines), chunk):
        body = "\n".join(lines[start:start + chunk]) + "\n"
        while True:
            out = stack.cli("cli", "publish", "--file", "-", stdin=body)
            if out.returncode == 0:
                break
            if out.returncode != 1 or time.time() > deadline:
                failures.append("publish failed on a valid file (exit %d): %s"
                                % (out.returncode, out.stderr.strip()))
                return
            stats["publish retries"] += 1
            time.sleep(0.3)
        time.sleep(pace_s)


def settled(stack, args, deadline, stats):
    """Runs a checked command until it settles: its JSON outcome (`stored`, `already_stored`,
    `rejected`, `contended`), or None when it has not by the deadline. Exit 1 (it failed
    after the CLI's own retries) is tried again with the same id: stored at most once."""
    while True:
        out = stack.cli("cli", "--json", *args)
        if out.returncode in (0, 3):
            return json.loads(out.stdout.splitlines()[-1])["outcome"]
        if out.returncode != 1 or time.time() > deadline:
            return None
        stats["checked command retries"] += 1
        time.sleep(0.3)


def stock_checked(stack, seed, skus, units, deadline):
    """The stocker: `units` of each checked product at A1 in each warehouse."""
    lines = [json.dumps({"type": "stock.received", "warehouse": w, "sku": sku, "location": "A1",
                         "quantity": units, "msg_id": "chaos-%d-stock-%s-%s" % (seed, w, sku)})
             for w in CHECKED_WAREHOUSES for sku in skus]
    while stack.cli("cli", "publish", "--file", "-", stdin="\n".join(lines) + "\n").returncode:
        if time.time() > deadline:
            raise SystemExit("chaos: the checked products could not be stocked")
        time.sleep(0.3)
    return len(lines)


def clerk(stack, rng, name, skus, count, t0, pace_s, deadline, told, stats):
    """Checked sales (3 in 4) and transfers between the two warehouses, one every pace_s;
    each command, with its outcome, goes to `told`."""
    for n in range(count):
        time.sleep(max(0.0, t0 + n * pace_s - time.time()))
        sku = rng.choice(skus)
        src, dst = rng.sample(CHECKED_WAREHOUSES, 2)
        cid = "%s-%d" % (name, n)
        if rng.random() < 0.75:
            c = dict(kind="sale", id=cid, warehouse=src, sku=sku, quantity=rng.randint(1, 6))
            args = ["publish", "sold", "-w", src, "-s", sku, "-l", "A1",
                    "-q", str(c["quantity"]), "--msg-id", cid]
        else:
            c = dict(kind="transfer", id=cid, warehouse=src, to=dst, sku=sku,
                     quantity=rng.randint(1, 10))
            args = ["transfer", "-s", sku, "--from-warehouse", src, "--from", "A1",
                    "--to-warehouse", dst, "--to", "A1", "-q", str(c["quantity"]),
                    "--transfer-id", cid]
        c["outcome"] = settled(stack, args, deadline, stats)
        told.append(c)


def check_checked(stack, skus, units, told, view):
    """The checked products' log against what their commands were told: each id stored at
    most once, an acknowledged command stored and a refused one not, a transfer both legs
    or neither, no location below zero at any point, and the view equal to the books."""
    log = []
    for w in CHECKED_WAREHOUSES:
        for sku in skus:
            log += [json.loads(l) for l in stack.ok("cli", "history", "-w", w, "-s", sku,
                                                    "--json").splitlines()]
    log.sort(key=lambda e: e["seq"])
    stored = defaultdict(int)
    for e in log:
        stored[e["msg_id"]] += 1
    problems = ["msg id %s stored %d times" % (i, n) for i, n in stored.items() if n > 1]
    legs = defaultdict(set)
    for e in log:
        if "transfer_id" in e:
            legs[e["transfer_id"]].add(e["type"])
    problems += ["transfer %s stored with one leg only: %s" % (t, sorted(k))
                 for t, k in legs.items() if len(k) != 2]
    books = {(w, sku): units for w in CHECKED_WAREHOUSES for sku in skus}
    for c in told:
        ids = [c["id"]] if c["kind"] == "sale" else [c["id"] + "-out", c["id"] + "-in"]
        acked = c["outcome"] in ("stored", "already_stored")
        if c["outcome"] is None:
            problems.append("%s %s never settled" % (c["kind"], c["id"]))
        elif any(stored[i] != int(acked) for i in ids):
            problems.append("%s %s was told %s, stored %s times"
                            % (c["kind"], c["id"], c["outcome"], [stored[i] for i in ids]))
        if acked:
            books[(c["warehouse"], c["sku"])] -= c["quantity"]
            if c["kind"] == "transfer":
                books[(c["to"], c["sku"])] += c["quantity"]
    sign = {"stock.received": 1, "stock.transferred_in": 1, "stock.sold": -1,
            "stock.transferred_out": -1}
    on_hand = defaultdict(int)
    for e in log:
        where = (e["warehouse"], e["sku"], e["location"])
        on_hand[where] += sign[e["type"]] * e["quantity"]
        if on_hand[where] < 0:
            problems.append("%s/%s/%s below zero after #%d" % (where + (e["seq"],)))
    for (w, sku), n in sorted(books.items()):
        locations = view.get("%s.%s" % (w, sku), {}).get("locations", {})
        if locations != ({"A1": n} if n else {}):
            problems.append("%s.%s: the stock view says %s, the books %d"
                            % (w, sku, locations, n))
    return problems


def main():
    if "--sites" in sys.argv[1:]:
        # The edge-sites drill: its own flags and defaults (scripts/chaos_sites.py). It
        # imports this file as a module: no bytecode written next to it.
        sys.dont_write_bytecode = True
        import chaos_sites
        return chaos_sites.main(sys.argv[1:])
    ap = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--products", type=int, default=2_000)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=12,
                    help="service kills in all, each SIGKILL or SIGTERM")
    ap.add_argument("--duration-s", type=float, default=30, help="how long publishing lasts")
    ap.add_argument("--checked-products", type=int, default=10,
                    help="products sold and transferred only by checked commands")
    ap.add_argument("--checked-commands", type=int, default=400,
                    help="checked sales and transfers in all, from %d clerks" % CLERKS)
    ap.add_argument("--deadline-s", type=float, default=600, help="fail if not done by then")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the store and logs")
    ap.add_argument("--cluster", action="store_true",
                    help="three nodes, R3, two instances of each service, node faults")
    ap.add_argument("--partitions", action="store_true",
                    help="stock-projector in 3 partitions and a standby, faults on them, "
                    "then 4 partitions")
    ap.add_argument("--sites", action="store_true",
                    help="the edge-sites drill instead: a hub and two sites, their links cut "
                    "and restored (scripts/chaos_sites.py: --seed, --events per site, default "
                    "2,000, --site-offline-s, --deadline-s, --keep)")
    args = ap.parse_args()
    if args.partitions and args.cluster:
        ap.error("--partitions runs on one server; give it without --cluster")
    if args.checked_commands > 0 and args.checked_products < 1:
        ap.error("--checked-commands needs at least one --checked-products")
    # Stopped from outside: still stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.time()
    deadline = started + args.deadline_s
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="stockwire-chaos-")
    stack = Stack(args.root, args.bin_dir, work, cluster=args.cluster)
    instances = (["%s#%d" % (name, k) for name in SERVICES for k in (1, 2)]
                 if args.cluster else list(SERVICES))
    if args.partitions:
        instances.remove("stock-projector")
        partitioned = ["stock-projector#p%dof3" % i for i in range(3)] + \
            ["stock-projector#p0of3-standby"]
    else:
        partitioned = []
    failures, stats = [], defaultdict(int)
    try:
        files, final = generate(rng, args.seed, args.events, args.products, args.publishers)
        faults = sorted((rng.uniform(0.05, 0.95) * args.duration_s, rng.choice(instances),
                         rng.uniform(0.1, 1.0), rng.choice(["SIGKILL", "SIGTERM"]))
                        for _ in range(args.kills))
        server_restart_at = rng.uniform(0.3, 0.7) * args.duration_s
        # Under each server or node outage, one service (both instances on a cluster) is
        # asked to stop: it must not wait on the server that is gone.
        stopped_in_outage = rng.sample(SERVICES, 3 if args.cluster else 1)

        if args.cluster:
            for i in range(len(stack.nodes)):
                stack.start_node(i)
            stack.ok("admin", "setup", "--replicas", "3")
        else:
            stack.start_server()
            stack.ok("admin", "setup")
        stack.ok("cli", "threshold", "set", "--default", "--low-stock-below", str(THRESHOLD))
        for name in instances + partitioned:
            stack.start_service(name)
        skus = ["chk%03d" % i for i in range(args.checked_products)]
        # Sales would take about a third more than this: some are refused for want of stock.
        units = max(5, args.checked_commands // max(1, args.checked_products))
        stocked = stock_checked(stack, args.seed, skus, units, deadline)

        chunk = 200
        chunks = max(1, max(len(f) for f in files) // chunk)
        pace = args.duration_s / chunks
        threads = [threading.Thread(target=publisher, daemon=True,
                                    args=(stack, f, chunk, pace, deadline, stats, failures))
                   for f in files]
        t0 = time.time()
        told, per_clerk = [], args.checked_commands // CLERKS
        threads += [threading.Thread(target=clerk, daemon=True, args=(
            stack, random.Random("%d-clerk%d" % (args.seed, k)), "chaos-%d-clerk%d" % (args.seed, k),
            skus, per_clerk, t0, args.duration_s / max(1, per_clerk), deadline, told, stats))
            for k in range(CLERKS)]
        for t in threads:
            t.start()

        def at(offset):
            time.sleep(max(0.0, t0 + offset - time.time()))

        plan = [(t, how, name, down) for t, name, down, how in faults]
        if args.cluster:
            node_faults = [("INVENTORY", 0.3), ("stock", 0.55), (None, 0.8)]
            for what, at_share in node_faults:
                plan.append((at_share * args.duration_s, "node", what, 3.0))
        else:
            plan.append((server_restart_at, "server", "nats-server", 1.0))
        if args.partitions:
            plan += [(0.35 * args.duration_s, "partition-SIGKILL", "0", 4.0),
                     (0.5 * args.duration_s, "partition-SIGTERM", "1", 1.0),
                     (0.75 * args.duration_s, "repartition", "4", 0.0)]
        stop_ms = defaultdict(list)
        started_at = defaultdict(float)

        def sigterm(name, when):
            took, code = stack.stop_service(name)
            stop_ms[name].append(took * 1000)
            stats["%s SIGTERMs" % name] += 1
            if took > 2 or code != 0:
                failures.append("%s: SIGTERM %s took %.1f s, exit code %s"
                                % (name, when, took, code))

        def outage(kill, start, down):
            """Kills the server or a node, stops a service meanwhile, starts both again."""
            killed = time.time()
            kill()
            time.sleep(down / 3)
            service = stopped_in_outage.pop()
            names = [n for n in instances if n.split("#")[0] == service]
            for name in names:
                sigterm(name, "while a server was down")
            stats["SIGTERMs while a server was down"] += len(names)
            time.sleep(max(0.0, killed + down - time.time()))
            start()
            for name in names:
                stack.start_service(name)
                started_at[name] = time.time()

        for offset, what, name, down in sorted(plan):
            at(offset)
            # A fault hits a running service, not one still starting.
            time.sleep(max(0.0, started_at[name] + 0.2 - time.time()))
            if what == "server":
                outage(stack.kill_server, stack.start_server, down)
                stats["nats-server restarts"] += 1
            elif what == "node":
                leading = stack.node_leading(name) if name else None
                i = leading if leading is not None else rng.randrange(len(stack.nodes))
                outage(lambda: stack.kill_node(i), lambda: stack.start_node(i), down)
                stats["node SIGKILLs (%s)" % (("leader of " + name) if name else "random")] += 1
            elif what in ("partition-SIGKILL", "partition-SIGTERM"):
                # The active instance of the partition, whichever it is now.
                active_id = stack.active_instance("stock-projector", int(name), 3)
                active = next((n for n in partitioned if n.replace("#", "-") == active_id), None)
                if active is None:
                    failures.append("no active instance of partition %s of 3 before the %s"
                                    % (name, what))
                    continue
                if what == "partition-SIGKILL":
                    stack.kill_service(active)
                else:
                    sigterm(active, "under load")
                stats["stock-projector partition %s: %s of its active instance"
                      % (name, what.split("-")[1])] += 1
                time.sleep(down)
                stack.start_service(active)
            elif what == "repartition":
                # From 3 partitions to 4 while events keep coming: all the old instances
                # stop, then the new ones start from the lowest old checkpoint.
                for old in partitioned:
                    sigterm(old, "to repartition")
                partitioned = ["stock-projector#p%dof4" % i for i in range(4)]
                for new in partitioned:
                    stack.start_service(new)
                stats["stock-projector repartitioned"] = "3 -> 4 partitions under load"
            elif what == "SIGKILL":
                stack.kill_service(name)
                time.sleep(down)
                stack.start_service(name)
                started_at[name] = time.time()
                stats["%s SIGKILLs" % name] += 1
            else:
                sigterm(name, "under load")
                time.sleep(down)
                stack.start_service(name)
                started_at[name] = time.time()
        for name, took in sorted(stop_ms.items()):
            stats["%s stop on SIGTERM (max)" % name] = "%.0f ms" % max(took)
        for t in threads:
            t.join(max(1.0, deadline - time.time()))
        published_s = time.time() - t0
        if any(t.is_alive() for t in threads):
            failures.append("publishers or clerks did not finish by the deadline")
            return report(stack, args, stats, failures, started, published_s, None)

        # Every service is still up: one that stopped by itself (refused, crashed) is a failure.
        with stack.lock:
            exited = {n: p.returncode for n, p in stack.services.items()
                      if p.poll() is not None and n in instances + partitioned}
        for name, code in sorted(exited.items()):
            failures.append("%s exited by itself (code %s)" % (name, code))

        # Catch up: both projectors at the end of the log.
        status = None
        while time.time() < deadline:
            out = stack.cli("cli", "status", "--json")
            if out.returncode != 0:
                time.sleep(0.5)
                continue
            status = json.loads(out.stdout)
            views = status["projectors"]
            if all(views[v]["lag"] == 0 for v in ("stock", "sales_velocity")):
                break
            time.sleep(0.5)
        else:
            failures.append("the projectors did not catch up by the deadline: %s"
                            % status["projectors"])
        caught_up_s = time.time() - t0

        if args.cluster:
            # Every stream (buckets included) at the same last sequence on all three nodes.
            ends, agreed = {}, False
            while time.time() < deadline:
                ends = stack.replica_ends()
                agreed = "INVENTORY" in ends and all(
                    len(e) == len(stack.nodes) and len(set(e.values())) == 1
                    for e in ends.values())
                if agreed:
                    break
                time.sleep(0.5)
            if agreed:
                stats["streams at one last sequence on every node"] = len(ends)
            else:
                failures.append("replicas not at the same last sequence by the deadline: %s"
                                % {k: e for k, e in ends.items() if len(set(e.values())) != 1
                                   or len(e) != len(stack.nodes)})
        if args.partitions:
            stock = status["projectors"]["stock"]
            last = status["streams"]["INVENTORY"]["last_seq"]
            ends = [p["checkpoint"] for p in stock.get("by_partition", [])]
            if stock["partitions"] != 4 or ends != [last] * 4:
                failures.append("the stock view is not in 4 partitions each at the end of "
                                "the log (#%d): %s" % (last, stock))
            else:
                stats["stock view partitions at the end of the log"] = "4 of 4"
            missing = [p for p in status["problems"] if "partition" in p]
            if missing:
                failures.append("partitions without an active instance: %s" % missing)
        acked = [c for c in told if c["outcome"] in ("stored", "already_stored")]
        expected = args.events + stocked + sum(1 if c["kind"] == "sale" else 2 for c in acked)
        stored = status["streams"]["INVENTORY"]["messages"]
        if stored != expected:
            failures.append("%d events stored, %d acknowledged" % (stored, expected))
        if status["dead_letters"]:
            failures.append("%d dead letters for valid events" % status["dead_letters"])
        out = stack.cli("cli", "verify")
        if out.returncode != 0:
            failures.append("verify: %s%s" % (out.stdout.strip()[-2000:], out.stderr.strip()))
        rows = {}
        for line in stack.ok("cli", "stock", "--json").splitlines():
            v = json.loads(line)
            rows["%s.%s" % (v["warehouse"], v["sku"])] = v
        view = {k: v["on_hand"] for k, v in rows.items()}
        wrong = {k: (view.get(k), n) for k, n in final.items() if view.get(k, 0) != n}
        if wrong:
            failures.append("%d products differ from the generator's books, e.g. %s"
                            % (len(wrong), list(wrong.items())[:3]))
        failures.extend(check_checked(stack, skus, units, told, rows)[:10])
        for c in told:
            kind = "checked sales" if c["kind"] == "sale" else "transfers"
            stats["%s %s" % (kind, c["outcome"])] += 1

        # The watcher settles: alternate, no repeat, last one agrees with the final stock.
        problems, alerts = None, 0
        while time.time() < deadline:
            problems, alerts = check_alerts(stack, view)
            if not problems:
                break
            time.sleep(1)
        if problems is None:
            failures.append("no time left before the deadline to check the alerts")
        elif problems:
            failures.extend(problems[:10])
        stats["low-stock alerts"] = alerts
        return report(stack, args, stats, failures, started, published_s, caught_up_s)
    except BaseException as stopped:
        # Stopped early (a node that did not start, a signal): keep the logs too.
        failures.append("stopped early: %s" % (stopped,))
        raise
    finally:
        stack.stop()
        if failures:
            logs = ["nats-server"] + [n["name"] for n in stack.nodes] + \
                [i.replace("#", "-") for i in instances + partitioned]
            for name in logs:
                path = os.path.join(work, name + ".log")
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        tail = f.readlines()[-15:]
                    print("--- %s.log (last lines)\n%s" % (name, "".join(tail)), file=sys.stderr)
            for f in failures:
                print("chaos: " + f, file=sys.stderr)
        if args.keep or failures:
            print("store and logs kept in %s" % work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def check_alerts(stack, view):
    by_product = defaultdict(list)
    count = 0
    for line in stack.ok("cli", "alerts", "--json").splitlines():
        a = json.loads(line)
        if a["type"] in ("stock.low", "stock.recovered"):
            p = a["payload"]
            by_product["%s.%s" % (p["warehouse"], p["sku"])].append(a["type"])
            count += 1
    problems = []
    for key in set(view) | set(by_product):
        said = by_product.get(key, [])
        for a, b in zip(said, said[1:]):
            if a == b:
                problems.append("%s: %s twice in a row" % (key, a))
                break
        if said and said[0] != "stock.low":
            problems.append("%s: first alert is %s" % (key, said[0]))
        low = view.get(key, 0) < THRESHOLD
        last_low = bool(said) and said[-1] == "stock.low"
        if low != last_low:
            problems.append("%s: on hand %s, threshold %d, last alert %s"
                            % (key, view.get(key), THRESHOLD, said[-1] if said else None))
    return problems, count


def report(stack, args, stats, failures, started, published_s, caught_up_s):
    rows = [("seed", args.seed), ("events", args.events), ("products", args.products),
            ("publishers", args.publishers),
            ("checked commands", "%d on %d skus in %s" % (
                args.checked_commands, args.checked_products, " and ".join(CHECKED_WAREHOUSES)))]
    rows += sorted(stats.items())
    rows.append(("publishing took", "%.1f s" % published_s))
    if caught_up_s is not None:
        rows.append(("views caught up after", "%.1f s" % caught_up_s))
    rows.append(("whole drill", "%.1f s" % (time.time() - started)))
    rows.append(("result", "FAILED" if failures else "ok: verify clean, no loss, no duplicates, "
                 "no dead letters, checked commands agree with the log, alerts alternate"
                 + (", replicas agree" if args.cluster else "")
                 + (", 4 partitions at the end of the log" if args.partitions else "")))
    width = max(len(k) for k, _ in rows)
    print("chaos drill")
    for k, v in rows:
        print("  %-*s  %s" % (width, k, v))
    for f in failures:
        print("chaos: " + f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
