"""The etcdctl script of the differential test: what a platform engineer does
with etcdctl every day, and every error case the single-node API must word as
etcd does. Steps run in order against a fresh single-member server:
    ("ctl", [args], stdin)            one etcdctl command
    ("watch", [args], [[put args]...], stdin)
                                      a watch left running while the actions run
Revisions are compared exactly, so the order of writes matters. The script is
cut into named sections so a server can be compared on the parts it serves;
script(names) joins the sections named, in the order of ORDER.
etcdctl 3.4 has no --count-only (it came in 3.5), so count-only ranges are
left to the API tests."""

# Over the server's 1.5 MiB --max-request-bytes, under etcdctl's own 2 MiB
# send limit, so the server's error is what is compared.
BIG = "x" * (1600 * 1024)

SECTIONS = {}

SECTIONS["kv"] = [
    # put / get / del and their options
    ("ctl", ["put", "foo", "bar"]),
    ("ctl", ["put", "foo", "baz", "--prev-kv"]),
    ("ctl", ["put", "foo1", "v1"]),
    ("ctl", ["put", "foo2", "v2"]),
    ("ctl", ["put", "fop", "v3"]),
    ("ctl", ["put", "zoo", "v4"]),
    ("ctl", ["put", "a/b", "", "--"]),
    ("ctl", ["get", "foo"]),
    ("ctl", ["get", "missing"]),
    ("ctl", ["get", "foo", "--prefix"]),
    ("ctl", ["get", "foo", "--from-key"]),
    ("ctl", ["get", "foo", "--prefix", "--limit", "2"]),
    ("ctl", ["get", "foo", "--prefix", "--limit", "2", "-w", "json"]),
    ("ctl", ["get", "foo", "--rev", "2"]),
    ("ctl", ["get", "foo", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND"]),
    ("ctl", ["get", "f", "--prefix", "--sort-by", "VALUE", "--order", "ASCEND"]),
    ("ctl", ["get", "f", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND"]),
    ("ctl", ["get", "f", "--prefix", "--sort-by", "CREATE", "--order", "DESCEND", "--limit", "3"]),
    ("ctl", ["get", "f", "--prefix", "--sort-by", "KEY", "--order", "DESCEND"]),
    ("ctl", ["get", "f", "--prefix", "--keys-only"]),
    ("ctl", ["get", "f", "--prefix", "--print-value-only"]),
    ("ctl", ["get", "foo", "-w", "json"]),
    ("ctl", ["get", "foo", "-w", "fields"]),
    ("ctl", ["get", "foo", "zoo"]),
    ("ctl", ["get", "", "--from-key", "--keys-only"]),
    ("ctl", ["put", "foo", "again", "-w", "json"]),
    ("ctl", ["del", "fop", "--prev-kv"]),
    ("ctl", ["del", "nothing"]),
    ("ctl", ["del", "foo", "--prefix", "-w", "json"]),
    ("ctl", ["get", "", "--from-key"]),
    ("ctl", ["put", "k1", "1"]),
    ("ctl", ["put", "k2", "2"]),
    ("ctl", ["put", "k3", "3"]),
    ("ctl", ["del", "k1", "k3"]),
    ("ctl", ["del", "", "--from-key"]),
]

SECTIONS["txn"] = [
    # txn fed on stdin
    ("ctl", ["put", "t", "1"]),
    ("ctl", ["txn"], 'value("t") = "1"\n\nput t 2\nget t\n\nput t failed\n\n'),
    ("ctl", ["txn"], 'value("t") = "1"\n\nput t 3\n\nget t\n\n'),
    ("ctl", ["txn", "-w", "json"], 'mod("t") > "0"\nversion("t") = "2"\n\nget t --prefix\n\n\n'),
    ("ctl", ["txn"], 'create("nope") = "0"\n\nput nope created\n\n\n'),
    ("ctl", ["get", "nope", "-w", "json"]),
]

SECTIONS["compaction"] = [
    # compaction and the compacted / future revision errors
    ("ctl", ["put", "c", "1"]),
    ("ctl", ["put", "c", "2"]),
    ("ctl", ["compaction", "3"]),
    ("ctl", ["get", "c", "--rev", "2"]),
    ("ctl", ["get", "c", "--rev", "100000"]),
    ("ctl", ["compaction", "2"]),
    ("ctl", ["compaction", "100000"]),
    ("ctl", ["get", "c", "--rev", "3"]),
]

SECTIONS["watch"] = [
    # watch: live, prefix, from a past revision, with prev kv, interactive
    ("watch", ["watch", "w"], [["put", "w", "1"], ["put", "w", "2"], ["del", "w"]]),
    ("watch", ["watch", "w", "--prefix", "--prev-kv"], [["put", "w1", "a"], ["put", "w1", "b"], ["put", "x", "no"]]),
    ("watch", ["watch", "w", "--prefix", "--rev", "4"], []),
    ("watch", ["watch", "w1", "--rev", "1"], []),
    ("watch", ["watch", "-i"], [["put", "wi", "1"]], "watch wi\n"),
]

SECTIONS["lease"] = [
    # leases: grant, attach keys, inspect, keep alive, revoke (deleting the keys)
    ("ctl", ["lease", "grant", "300"]),
    ("ctl", ["lease", "list"]),
    ("ctl", ["put", "leased1", "v", "--lease", "{lease}"]),
    ("ctl", ["put", "leased2", "v", "--lease", "{lease}", "-w", "json"]),
    ("ctl", ["get", "leased1", "-w", "json"]),
    ("ctl", ["lease", "timetolive", "{lease}", "--keys"]),
    ("ctl", ["lease", "keep-alive", "--once", "{lease}"]),
    ("ctl", ["lease", "revoke", "{lease}"]),
    ("ctl", ["get", "leased", "--prefix", "-w", "json"]),
    ("ctl", ["lease", "timetolive", "{lease}"]),
    ("ctl", ["lease", "revoke", "{lease}"]),
    ("ctl", ["lease", "grant", "1"]),
    ("ctl", ["lease", "timetolive", "{lease}", "-w", "json"]),
    ("ctl", ["lease", "revoke", "1234"]),
    ("ctl", ["lease", "timetolive", "1234"]),
    ("ctl", ["lease", "keep-alive", "--once", "1234"]),
    ("ctl", ["put", "leased", "v", "--lease", "1234"]),
    ("ctl", ["lease", "grant", "9000000001"]),
]

SECTIONS["maintenance"] = [
    # endpoint, member, maintenance
    ("ctl", ["endpoint", "health"]),
    ("ctl", ["endpoint", "status"]),
    ("ctl", ["endpoint", "status", "-w", "json"]),
    ("ctl", ["endpoint", "hashkv"]),
    ("ctl", ["member", "list"]),
    ("ctl", ["member", "list", "-w", "json"]),
    ("ctl", ["defrag"]),
    ("ctl", ["alarm", "list"]),
    ("ctl", ["alarm", "disarm"]),
]

SECTIONS["snapshot"] = [
    ("ctl", ["snapshot", "save", "{dir}/snap.db"]),
]

SECTIONS["errors"] = [
    # errors
    ("ctl", ["put", "", "empty"]),
    ("ctl", ["put", "big"], BIG),
    ("ctl", ["txn"], "\n" + "".join("put dup%d x\n" % i for i in range(129)) + "\n\n"),
    ("ctl", ["txn"], "\nput d 1\nput d 2\n\n\n"),
    ("ctl", ["put", "noval", "--ignore-value"]),
    ("ctl", ["put", "nolease", "x", "--ignore-lease"]),
    ("ctl", ["get", "", "--from-key", "-w", "json"]),
]

# Leases come after the hash: their ids are random, and keys carry them.
ORDER = ["kv", "txn", "compaction", "watch", "maintenance", "snapshot", "lease", "errors"]


def script(names=None):
    """The steps of the sections named (all when None), in the script's order."""
    chosen = ORDER if names is None else [n for n in ORDER if n in names]
    return [step for n in chosen for step in SECTIONS[n]]
