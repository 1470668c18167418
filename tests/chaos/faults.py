"""The faults of a chaos run and the thread that injects them at random times.

Every fault kind is a function inject(ctx, rng) -> (description, members,
heal); heal() undoes it. The scheduler waits a random time, injects one fault
(or, with probability `combine`, two of different groups at once), holds them
a random time, heals them in reverse order, and logs each one.

Kinds, by group (FAULTS below is the list; --faults picks from it):

  net      partition-minority  a random minority cut off from the rest
           partition-leader    the leader alone
           partition-bridge    two halves that cannot see each other, and one
                               member that sees both
           partition-oneway    one member (the leader, half the time) whose
                               messages to the others are lost while theirs
                               reach it
           delay               slow links (netem delay, a tbf slow link, or the
                               proxy's per-message delay) on a minority
           loss                20-40% of peer packets (or messages) lost on a
                               minority
  process  kill                SIGKILL, restarted after the hold
           pause               SIGSTOP for longer than an election timeout,
                               then SIGCONT
  disk     disk-eio            restarted on the test build with its WAL's nth
           disk-enospc         fdatasync failing with EIO (or nth write with
                               ENOSPC): it must stop, never acknowledge what it
                               could not write; restarted healthy at heal
  power    power               power cut of one member (cluster.py: the WAL
                               cut back to its last fdatasync)
           power-all           every member at once

  membership
           member-readd        MemberRemove of a member (through another);
                               it must stop by itself; its data directory is
                               wiped; after the hold it is added back
                               (MemberAdd: a new id) with its name and peer
                               URL and started with --initial-cluster-state
                               existing and the list MemberAdd gave
           member-replace      SIGKILL, data directory wiped; after the hold
                               the member is removed and a replacement (a new
                               name, the same peer URL) added and started as
                               above (docs/cluster.md's runbook)

Membership faults start only when no other fault holds a member (a voter
down makes the strict reconfiguration check refuse changes, as etcd does),
never join a round as its second fault, and heal last; their changes are
retried while the cluster refuses them. They run outside the scheduler's
lock (a change may wait for a crashed member the monitor restarts).
"""
import contextlib
import threading
import time

NET_FAULTS = ["partition-minority", "partition-leader", "partition-bridge", "partition-oneway",
              "delay", "loss"]
PROCESS_FAULTS = ["kill", "pause"]
DISK_FAULTS = ["disk-eio", "disk-enospc"]
POWER_FAULTS = ["power", "power-all"]
MEMBERSHIP_FAULTS = ["member-readd", "member-replace"]
FAULTS = NET_FAULTS + PROCESS_FAULTS + DISK_FAULTS + POWER_FAULTS + MEMBERSHIP_FAULTS

GROUPS = {}
for _g, _names in (("net", NET_FAULTS), ("process", PROCESS_FAULTS), ("disk", DISK_FAULTS),
                   ("power", POWER_FAULTS), ("membership", MEMBERSHIP_FAULTS)):
    for _f in _names:
        GROUPS[_f] = _g


def parse_faults(text):
    """--faults: "all", "none", group names or kinds, comma separated."""
    if text in ("", "none"):
        return []
    out = []
    for word in text.split(","):
        word = word.strip()
        if word == "all":
            out += FAULTS
        elif word in ("net", "process", "disk", "power", "membership"):
            out += [f for f in FAULTS if GROUPS[f] == word]
        elif word in FAULTS:
            out.append(word)
        else:
            raise ValueError("unknown fault %r (kinds: %s)" % (word, ", ".join(FAULTS)))
    return list(dict.fromkeys(out))


class Context:
    """What faults act on, and where they report."""

    def __init__(self, cluster, net, ids, anomalies, log):
        self.c = cluster
        self.net = net
        self.ids = ids  # member id -> index
        self.anomalies = anomalies  # harness findings (list of dicts)
        self.log = log
        self.busy = set()  # members under a process/disk/power fault now
        self.blocked = set()  # directed links cut now, by every active fault

    def n(self):
        return len(self.c.members)

    def leader(self):
        return self.c.leader(self.ids)

    def free_members(self):
        return [m.i for m in self.c.live() if m.i not in self.busy]

    def minority(self, rng, pool=None):
        pool = list(range(self.n())) if pool is None else pool
        size = rng.randint(1, max(1, (self.n() - 1) // 2))
        return sorted(rng.sample(pool, min(size, len(pool))))

    def add_links(self, links):
        self.blocked |= links
        self.net.set_blocked(self.blocked)

    def remove_links(self, links):
        self.blocked -= links
        self.net.set_blocked(self.blocked)

    def id_of(self, i):
        return next((mid for mid, j in self.ids.items() if j == i), None)

    def set_id(self, i, new_id):
        """Member slot i is now member new_id (None: out of the cluster)."""
        for mid in [mid for mid, j in self.ids.items() if j == i]:
            del self.ids[mid]
        if new_id is not None:
            self.ids[new_id] = i
        self.net.set_member_ids(self.ids)

    def restart(self, i, **kw):
        m = self.c.members[i]
        m.kill()
        m.start(**kw)


def _cut(side_a, side_b):
    return {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}


def _partition(ctx, links, what, members):
    ctx.add_links(links)
    return what, members, lambda: ctx.remove_links(links)


def f_partition_minority(ctx, rng):
    side = ctx.minority(rng)
    rest = [i for i in range(ctx.n()) if i not in side]
    return _partition(ctx, _cut(side, rest), "cut off %s" % _names(ctx, side), side)


def f_partition_leader(ctx, rng):
    lead = ctx.leader()
    if lead is None:
        return None
    rest = [i for i in range(ctx.n()) if i != lead]
    return _partition(ctx, _cut([lead], rest), "leader %s alone" % _names(ctx, [lead]), [lead])


def f_partition_bridge(ctx, rng):
    order = list(range(ctx.n()))
    rng.shuffle(order)
    bridge, rest = order[0], order[1:]
    a, b = rest[:len(rest) // 2], rest[len(rest) // 2:]
    what = "%s | %s, bridged by %s" % (_names(ctx, a), _names(ctx, b), _names(ctx, [bridge]))
    return _partition(ctx, _cut(a, b), what, [bridge])


def f_partition_oneway(ctx, rng):
    lead = ctx.leader()
    src = lead if lead is not None and rng.random() < 0.5 else rng.randrange(ctx.n())
    links = {(src, d) for d in range(ctx.n()) if d != src}
    return _partition(ctx, links, "%s cannot send to the others (it still hears them)" %
                      _names(ctx, [src]), [src])


def f_delay(ctx, rng):
    side = ctx.minority(rng)
    ms = rng.choice([50, 100, 200, 400])
    for i in side:
        ctx.net.set_delay(i, ms)

    def heal():
        for i in side:
            ctx.net.set_delay(i, 0)
    return "%dms (%s) on %s" % (ms, ctx.net.delay_kind(), _names(ctx, side)), side, heal


def f_loss(ctx, rng):
    side = ctx.minority(rng)
    pct = rng.choice([20, 30, 40])
    for i in side:
        ctx.net.set_loss(i, pct)

    def heal():
        for i in side:
            ctx.net.set_loss(i, 0)
    return "%d%% loss on %s" % (pct, _names(ctx, side)), side, heal


def _pick_process_target(ctx, rng):
    free = ctx.free_members()
    lead = ctx.leader()
    if lead in free and rng.random() < 0.4:
        return lead
    return rng.choice(free) if free else None


def _on_member(ctx, rng, act):
    """Runs act(member) on a member no other process fault holds (the leader
    40% of the time); act returns (what, heal)."""
    i = _pick_process_target(ctx, rng)
    if i is None:
        return None
    what, heal = act(ctx.c.members[i])
    return what, [i], heal


def _kill(ctx, m):
    m.expect_exit = True
    m.kill()
    return "SIGKILL %s" % m.name, lambda: ctx.restart(m.i)


def f_kill(ctx, rng):
    return _on_member(ctx, rng, lambda m: _kill(ctx, m))


def f_pause(ctx, rng):
    def act(m):
        m.pause()
        return "SIGSTOP %s" % m.name, m.resume
    return _on_member(ctx, rng, act)


def _disk(ctx, rng, spec):
    nth = rng.randint(3, 40)

    def act(m):
        ctx.restart(m.i, binary=ctx.c.san_binary, env={"QUOIN_TEST_WAL_FAULT": "%s:%d" % (
            spec, nth)})
        m.expect_exit = True

        def heal():
            stopped = not m.alive()
            tail = m.log_lines()
            if not stopped and any("cannot persist" in line for line in tail):
                ctx.anomalies.append({
                    "kind": "DISK-FAULT-IGNORED",
                    "text": "%s logged a failed WAL write but kept running" % m.name,
                    "excerpt": tail[-10:]})
            ctx.log("  %s %s after its disk fault" % (
                m.name, "had stopped (exit %s)" % m.proc.returncode if stopped else "still ran"))
            ctx.restart(m.i)
        return "%s: WAL %s fails at call %d" % (m.name, spec, nth), heal
    return _on_member(ctx, rng, act)


def f_disk_eio(ctx, rng):
    return _disk(ctx, rng, rng.choice(["fdatasync:eio", "write:eio"]))


def f_disk_enospc(ctx, rng):
    return _disk(ctx, rng, "write:enospc")


def f_power(ctx, rng):
    def act(m):
        m.expect_exit = True
        return "power cut %s: %s" % (m.name, m.power_cut()), lambda: ctx.restart(m.i)
    return _on_member(ctx, rng, act)


def f_power_all(ctx, rng):
    if ctx.busy:
        return None
    what = []
    live = ctx.c.live()
    for m in live:
        m.expect_exit = True
    for m in live:
        what.append("%s: %s" % (m.name, m.power_cut()))

    def heal():
        for m in live:
            m.start()
    return "power cut of every member (%s)" % "; ".join(what), [m.i for m in live], heal


def _membership_target(ctx, rng):
    """A member for a membership fault: only when every member is up and no
    other fault holds one."""
    if ctx.busy or any(not m.alive() for m in ctx.c.live()) or len(ctx.c.live()) < ctx.n():
        return None
    return _pick_process_target(ctx, rng)


def _refused(ctx, m, what, err):
    ctx.anomalies.append({"kind": "RECONFIG-REFUSED",
                          "text": "%s of %s was refused for 40s with every other member up" % (
                              what, m.name),
                          "excerpt": [err or "?"]})
    ctx.log("  %s of %s refused: %s" % (what, m.name, err))


def _rejoin(ctx, m, name):
    """Heals a membership fault: MemberAdd of slot m as `name`, then starts it
    on an empty data directory with --initial-cluster-state existing. A
    refused add leaves the slot out of the cluster (and is a finding)."""
    new_id, conf = ctx.c.member_add(m, name)
    if new_id is None:
        _refused(ctx, m, "MemberAdd", conf)
        return
    m.name = name
    m.initial_cluster = conf
    m.cluster_state = "existing"
    m.removed = False
    ctx.set_id(m.i, new_id)
    listed = ctx.c.wait_listed(new_id)
    ctx.log("  %s added back as %x%s" % (name, new_id, "" if listed else
                                         " (not listed by every member after 10s)"))
    m.start()


def f_member_readd(ctx, rng):
    i = _membership_target(ctx, rng)
    if i is None:
        return None
    m = ctx.c.members[i]
    old = ctx.id_of(i)
    m.expect_exit = True
    err = ctx.c.member_remove(old, i)
    if err is not None:
        m.expect_exit = False
        _refused(ctx, m, "MemberRemove", err)
        return None
    m.removed = True
    ctx.set_id(i, None)
    deadline = time.monotonic() + 10
    while m.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = not m.alive()
    if not stopped:
        ctx.anomalies.append({"kind": "REMOVED-MEMBER-RAN",
                              "text": "%s still ran 10s after its removal%s" % (
                                  m.name, m.dump_stacks()),
                              "excerpt": m.log_tail(10)})
    m.kill()
    m.wipe()
    return ("%s (%x) removed, %s, data wiped" % (
        m.name, old, "stopped by itself" if stopped else "killed after 10s"), [i],
        lambda: _rejoin(ctx, m, m.name))


def f_member_replace(ctx, rng):
    i = _membership_target(ctx, rng)
    if i is None:
        return None
    m = ctx.c.members[i]
    m.expect_exit = True
    m.kill()
    m.wipe()

    def heal():
        old = ctx.id_of(i)
        err = ctx.c.member_remove(old, i)
        m.removed = True
        ctx.set_id(i, None)
        if err is not None:
            _refused(ctx, m, "MemberRemove", err)
            return
        m.generation += 1
        _rejoin(ctx, m, "%s.%d" % (m.slot, m.generation))
    return "SIGKILL %s, data wiped; removed and replaced at heal" % m.name, [i], heal


KINDS = {name: globals()["f_" + name.replace("-", "_")] for name in FAULTS}


def _names(ctx, idx):
    return "{%s}" % ",".join(ctx.c.members[i].name for i in idx)


class Scheduler:
    """Injects faults from `kinds` until stopped; keeps the log of what it did."""

    def __init__(self, ctx, kinds, rng, t0, combine=0.3, interval=(1.0, 3.0), hold=(1.5, 5.0)):
        self.ctx = ctx
        self.kinds = kinds
        self.rng = rng
        self.t0 = t0
        self.combine = combine
        self.interval = interval
        self.hold = hold
        self.events = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None
        self.lock = threading.Lock()  # the harness shares it (its crash monitor)

    def start(self):
        if self.kinds:
            self.thread.start()

    def now(self):
        return round(time.monotonic() - self.t0, 3)

    def _locked(self, kind):
        return self.lock if GROUPS[kind] != "membership" else contextlib.nullcontext()

    def _inject(self, kind):
        with self._locked(kind):
            res = KINDS[kind](self.ctx, self.rng)
        if res is None:
            return None
        what, members, heal = res
        ev = {"kind": kind, "at": self.now(), "what": what,
              "members": [self.ctx.c.members[i].name for i in members]}
        self.events.append(ev)
        self.ctx.log("%7.1fs  + %-18s %s" % (ev["at"], kind, what))
        if GROUPS[kind] != "net":
            self.ctx.busy |= set(members)
        return ev, members, heal

    def _heal(self, item):
        ev, members, heal = item
        with self._locked(ev["kind"]):
            heal()
        ev["healed"] = self.now()
        if GROUPS[ev["kind"]] != "net":
            self.ctx.busy -= set(members)
        self.ctx.log("%7.1fs  - %-18s healed" % (ev["healed"], ev["kind"]))

    def _run(self):
        try:
            while not self.stop_ev.wait(self.rng.uniform(*self.interval)):
                first = self.rng.choice(self.kinds)
                chosen = [first]
                others = [k for k in self.kinds
                          if GROUPS[k] != GROUPS[first] and GROUPS[k] != "membership"]
                if others and self.rng.random() < self.combine:
                    chosen.append(self.rng.choice(others))
                active = [x for x in (self._inject(k) for k in chosen) if x]
                hold = self.rng.uniform(*self.hold)
                self.stop_ev.wait(hold)
                # Membership last: adding a voter needs every other one up.
                for item in sorted(reversed(active),
                                   key=lambda it: GROUPS[it[0]["kind"]] == "membership"):
                    self._heal(item)
        except Exception as e:  # reported by the harness, which then stops
            self.error = e
            raise

    def stop(self):
        self.stop_ev.set()
        if self.thread.is_alive():
            self.thread.join(150)  # a membership heal retries for up to 90s

    def counts(self):
        out = {}
        for ev in self.events:
            out[ev["kind"]] = out.get(ev["kind"], 0) + 1
        return out
