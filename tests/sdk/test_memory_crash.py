"""Crash safety and multi-process writes of the memory, with real SQLite/FAISS files and real processes.

1. A child process ingests in a loop (remember, forget, index flushes, searches) and is killed with
   SIGKILL at random moments, 24 times; after each kill the home is reopened, ``verify()`` passes and
   every memory whose ``remember`` returned (the child fsyncs an acknowledgement right after) is there.
2. Three processes write to one home at once (shared user + own users, racing on concept creation):
   no corruption, no lost writes, no 'database is locked', and the index saved last holds everything.
   Each writer also forgets some of its items, and checks mid-flight that the others' writes are visible.
3./4. Deterministic interleavings of two open memories (two SQLite connections) that once lost writes:
   a live index missing another writer's add, an index file written back after everything was forgotten,
   and remember() storing a photo without its vector when another writer forgot it a moment before.

Children use precomputed embeddings (``embedding=`` + ``model_id=``), so they never build open_clip/torch.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from covip.sdk import Memory
from covip.sdk.errors import NotFoundError
from covip.sdk.files import pid_alive
from covip.sdk.memory.index import VectorIndex, read_sidecar

MODEL = "crash/32"
DIM = 32
USER = "ana"


# --------------------------------------------------------------------------- shared with the children
def photo_bytes(i: int) -> bytes:
    """A small PNG unique to ``i`` (deterministic encoding)."""
    import io

    from PIL import Image

    img = Image.new("RGB", (8, 8), ((i * 37) % 256, (i * 101) % 256, (i * 7 + 11) % 256))
    img.putpixel((0, 0), (i & 255, (i >> 8) & 255, (i >> 16) & 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def vector(i: int):
    """A deterministic 32-d embedding for item ``i``."""
    import numpy as np

    return np.random.default_rng(i).standard_normal(32).astype("float32")


def ack(fd: int, line: str) -> None:
    """Append one line to the acknowledgements file and make it durable."""
    import os

    os.write(fd, (line + "\n").encode())
    os.fsync(fd)


def read_acks(path):
    """Lines of an acknowledgements file as (tag, int) pairs (a torn last line is ignored)."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().split("\n")[:-1]:
        tag, _, num = line.partition(" ")
        if num.isdigit():
            out.append((tag, int(num)))
    return out


_SHARED = "import os\n\n" + "\n\n".join(
    textwrap.dedent(inspect.getsource(f)) for f in (photo_bytes, vector, ack, read_acks))


def _sha(i: int) -> str:
    return hashlib.sha256(photo_bytes(i)).hexdigest()


def _token(i: int) -> str:
    return f"tok{i}x"


def _dialogue(i: int) -> str:
    return f"User: This is item {_token(i)} by the river.\nAssistant: I will remember {_token(i)}."


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COVIP_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------- 1. SIGKILL at random moments
_INGEST_CHILD = _SHARED + textwrap.dedent('''

import random
import sys

from covip.sdk import IndexConfig, Memory, MemoryConfig

home, acks_path, base, seed, kind, flush_every = sys.argv[1:7]
base, seed, flush_every = int(base), int(seed), int(flush_every)
rng = random.Random(seed)
print("ready", flush=True)  # the parent's kill clock starts here: kills can land inside open() too
fd = os.open(acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
state = {}
for tag, num in read_acks(acks_path):
    state[num] = tag
live = [num for num, tag in state.items() if tag == "r"]
config = MemoryConfig(home=home, index=IndexConfig(kind=kind, flush_every=flush_every))
mem = Memory.open(home, config=config)
mem.add_user("ana", exist_ok=True)
n = 0
while True:
    i = base + n
    mem.remember("ana", photo_bytes(i),
                 f"User: This is item tok{i}x by the river.\\nAssistant: I will remember tok{i}x.",
                 ["Bori", f"c{n % 5}"], embedding=vector(i), model_id="crash/32")
    ack(fd, f"r {i}")
    live.append(i)
    n += 1
    if n % 5 == 0 and len(live) > 3:
        victim = live.pop(rng.randrange(len(live) - 1))
        ack(fd, f"F {victim}")  # intent: killed before the "f" line, the photo may or may not be gone
        mem.forget_photo("ana", photo_bytes(victim))
        ack(fd, f"f {victim}")
    if n % 3 == 0:
        mem.flush()
    if n % 7 == 0:
        hits = mem.search("ana", embedding=vector(i), model_id="crash/32", k=2)
        assert hits and hits[0].score > 0.999, hits
''')


def _wait_ready(proc: subprocess.Popen, timeout: float = 20.0) -> float:
    """Block until the child prints 'ready'; return how long its start took."""
    t0 = time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    assert line.strip() == b"ready", f"child did not start (rc={proc.poll()}, said {line!r})"
    return time.monotonic() - t0


def _tmp_files(home: Path) -> list[str]:
    tmp = home / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _check_round(home: Path, acks_path: Path, rounds_done: int, rng: random.Random,
                 newest: set[int], stats: Counter[str]) -> None:
    """Reopen after a kill and check everything acknowledged is there, whole and findable."""
    # Temp files may be left by the killed writer (dead pid) but by no one else.
    for name in _tmp_files(home):
        pid = name.split("-", 1)[0]
        assert pid.isdigit() and not pid_alive(int(pid)), f"unexpected temp file {name}"
        stats["tmp_left_by_kill"] += 1

    state: dict[int, str] = {}
    for tag, num in read_acks(acks_path):
        state[num] = tag
    present = {i for i, tag in state.items() if tag == "r"}
    forgotten = {i for i, tag in state.items() if tag == "f"}
    uncertain = {i for i, tag in state.items() if tag == "F"}  # killed during forget_photo
    stats["uncertain_forgets"] = len(uncertain)

    with Memory.open(home) as mem:
        assert _tmp_files(home) == [], f"temp files of dead writers survived reopening: {_tmp_files(home)}"
        report = mem.verify()
        assert report.ok, "verify failed after SIGKILL:\n" + "\n".join(report.errors)
        for w in report.warnings:
            stats["warn: " + w.split(":")[0].split("(")[0].strip()[:40]] += 1
        if not present:
            return

        photos = {p.sha256: p for p in mem.photos(USER)}
        texts = "\n".join(h.episode.text for h in mem.history(USER))
        lost = sorted(i for i in present if _sha(i) not in photos)
        assert not lost, f"acknowledged photos lost after SIGKILL: {lost[:10]}"
        lost = sorted(i for i in present if _token(i) not in texts)
        assert not lost, f"acknowledged dialogues lost after SIGKILL: {lost[:10]}"
        back = sorted(i for i in forgotten if _sha(i) in photos or _token(i) in texts)
        assert not back, f"forgotten items came back after SIGKILL: {back[:10]}"
        # At most one remember per kill was in flight (committed or not, but never acknowledged).
        extra = set(photos) - {_sha(i) for i in present | uncertain}
        assert len(extra) <= rounds_done, f"{len(extra)} unacknowledged photos after {rounds_done} kills"
        stats["committed_unacked"] = len(extra)

        older = sorted(present - newest)
        sample = sorted(newest & present) + rng.sample(older, min(25, len(older)))
        for i in sample:
            hits = mem.search(USER, embedding=vector(i), model_id=MODEL, k=1)
            assert hits, f"search found nothing for item {i}"
            assert hits[0].photo.sha256 == _sha(i), f"item {i}: top hit is another photo ({hits[0].score})"
            assert abs(hits[0].score - 1.0) < 1e-4, hits[0].score
            assert any(_token(i) in e.text for e in hits[0].episodes)
            assert mem.find_photo(USER, photo_bytes(i)).sha256 == _sha(i)
            path = hits[0].photo.path
            assert path is not None and hashlib.sha256(path.read_bytes()).hexdigest() == _sha(i)
        for i in rng.sample(sorted(forgotten), min(5, len(forgotten))):
            try:
                mem.find_photo(USER, photo_bytes(i))
            except NotFoundError:
                pass
            else:
                raise AssertionError(f"forgotten photo {i} is still there")
    assert _tmp_files(home) == []


def test_sigkill_during_ingest_keeps_memory_consistent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    acks = tmp_path / "acks.txt"
    script = tmp_path / "ingest_child.py"
    script.write_text(_INGEST_CHILD)
    rng = random.Random(20240501)
    stats: Counter[str] = Counter()
    starts: list[float] = []
    rounds = 24
    for r in range(rounds):
        kind = "hnsw" if r % 3 == 2 else "flat"  # switching kinds between rounds exercises the rebuild
        flush_every = rng.choice([1, 2, 5, 1000])
        stderr_path = tmp_path / f"child{r}.err"
        before = {i for _, i in read_acks(acks)}
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(home), str(acks), str((r + 1) * 10_000), str(r), kind,
                 str(flush_every)],
                stdout=subprocess.PIPE, stderr=err, env=_child_env())
        try:
            starts.append(_wait_ready(proc))
            time.sleep(rng.uniform(0.05, 1.5))
            assert proc.poll() is None, (f"round {r}: child died on its own (rc={proc.returncode}):\n"
                                         + stderr_path.read_text())
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, stderr_path.read_text()
        newest = {i for _, i in read_acks(acks)} - before
        stats["acks"] = len(read_acks(acks))
        _check_round(home, acks, r + 1, rng, newest, stats)
    print(f"\ncrash test: {rounds} kills, child start {min(starts):.2f}-{max(starts):.2f}s, {dict(stats)}")
    assert max(starts) < 10
    remembered = sum(1 for tag, _ in read_acks(acks) if tag == "r")
    assert remembered >= rounds, f"children acknowledged only {remembered} remembers in {rounds} rounds"


# --------------------------------------------------------------------------- 2. concurrent writers
_WRITER_CHILD = _SHARED + textwrap.dedent('''

import random
import sys
import time
from pathlib import Path

from covip.sdk import IndexConfig, Memory, MemoryConfig

home, sync_dir, p, nprocs, n_items = sys.argv[1:6]
p, nprocs, n_items = int(p), int(nprocs), int(n_items)
sync = Path(sync_dir)
base = (p + 1) * 100_000
fd = os.open(sync / f"acks{p}.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def barrier(name, count):
    deadline = time.monotonic() + 60
    while len(list(sync.glob(name))) < count:
        assert time.monotonic() < deadline, f"barrier {name} timed out"
        time.sleep(0.002)


barrier("go", 1)
# Every process opens the same (new) home at once: schema migration and WAL setup race too.
config = MemoryConfig(home=home, index=IndexConfig(flush_every=7))
mem = Memory.open(home, config=config)
mem.add_user("shared", exist_ok=True)
mem.add_user(f"own{p}", exist_ok=True)
river = "Han River" if p % 2 else "han river"  # the same concept, spelled differently by each process
rng = random.Random(p)


def kept(k):
    return (k % 100_000) % 4 != 0  # shared items n = 0, 4, 8, ... are forgotten by their writer later


for n in range(n_items):
    i = base + n
    mem.remember("shared", photo_bytes(i), f"User: shared tok{i}x from process {p}.",
                 ["Bori", river, f"p{p}"], embedding=vector(i), model_id="crash/32")
    ack(fd, f"s {i}")
    j = i + 50_000
    mem.remember(f"own{p}", photo_bytes(j), f"User: own tok{j}x.", ["Bori", river],
                 embedding=vector(j), model_id="crash/32")
    ack(fd, f"o {j}")
    if n >= 2 and not kept(i - 2):
        mem.forget_photo("shared", photo_bytes(i - 2))
        ack(fd, f"x {i - 2}")
    if n % 10 == 9:
        for user, k in (("shared", i), (f"own{p}", j)):
            hits = mem.search(user, embedding=vector(k), model_id="crash/32", k=3)
            assert hits and hits[0].score > 0.999 and f"tok{k}x" in hits[0].episodes[0].text, (user, k, hits)
    if n % 3 == 1:  # mid-flight: another process's acknowledged item is visible here at once
        q = rng.choice([q for q in range(nprocs) if q != p])
        theirs = [k for tag, k in read_acks(sync / f"acks{q}.txt") if tag == "s" and kept(k)]
        if theirs:
            k = rng.choice(theirs)
            hits = mem.search("shared", embedding=vector(k), model_id="crash/32", k=1)
            assert hits and f"tok{k}x" in hits[0].episodes[0].text and hits[0].score > 0.999, (p, q, k, hits)
(sync / f"done{p}").touch()
barrier("done*", nprocs)
# A live process must see the other processes' writes (its in-memory index catches up from SQLite).
for q in range(nprocs):
    for tag, k in read_acks(sync / f"acks{q}.txt"):
        if tag == "s" and kept(k):
            hits = mem.search("shared", embedding=vector(k), model_id="crash/32", k=1)
            assert hits and f"tok{k}x" in hits[0].episodes[0].text and hits[0].score > 0.999, (p, q, k, hits)
mem.close()
print("ok", flush=True)
''')


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    sync = tmp_path / "sync"
    sync.mkdir()
    script = tmp_path / "writer_child.py"
    script.write_text(_WRITER_CHILD)
    nprocs, n_items = 3, 60
    procs = []
    t0 = time.monotonic()
    for p in range(nprocs):
        err = open(tmp_path / f"writer{p}.err", "wb")
        procs.append((subprocess.Popen([sys.executable, str(script), str(home), str(sync), str(p), str(nprocs),
                                        str(n_items)], stdout=subprocess.PIPE, stderr=err, env=_child_env()),
                      err))
    time.sleep(1.0)  # let them all import and reach the barrier
    (sync / "go").touch()
    failures = []
    for p, (proc, err) in enumerate(procs):
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        err.close()
        stderr = (tmp_path / f"writer{p}.err").read_text()
        if proc.returncode != 0 or out.strip() != b"ok":
            failures.append(f"writer {p} exited {proc.returncode}:\n{stderr}")
        assert "database is locked" not in stderr, stderr
    assert not failures, "\n".join(failures)
    elapsed = time.monotonic() - t0

    acks = {p: read_acks(sync / f"acks{p}.txt") for p in range(nprocs)}
    forgotten = sorted(i for p in acks for tag, i in acks[p] if tag == "x")
    shared = sorted(i for p in acks for tag, i in acks[p] if tag == "s" and i not in set(forgotten))
    own = {p: sorted(i for tag, i in acks[p] if tag == "o") for p in acks}
    n_forgotten = nprocs * len(range(0, n_items - 2, 4))  # the writer forgets item n at step n + 2
    assert len(forgotten) == n_forgotten and len(shared) == nprocs * n_items - n_forgotten
    assert all(len(v) == n_items for v in own.values())

    # The index file saved last (by whichever process closed last) holds exactly SQLite's vectors.
    con = sqlite3.connect(home / "memory.db")
    try:
        groups = con.execute("SELECT u.id, u.name, count(*) FROM embeddings e JOIN users u ON u.id = e.user_id "
                             "GROUP BY u.id").fetchall()
        assert {name: n for _, name, n in groups} == {"shared": len(shared),
                                                       **{f"own{p}": n_items for p in range(nprocs)}}
        for uid, name, _ in groups:
            files = sorted((home / "index").glob(f"u{uid}-*.faiss"))
            assert len(files) == 1, (name, files)
            sql_ids = sorted(r[0] for r in con.execute("SELECT id FROM embeddings WHERE user_id = ?", [uid]))
            index = VectorIndex.load(files[0], DIM)
            assert sorted(index.ids().tolist()) == sql_ids, f"index of {name} does not match SQLite"
            side = read_sidecar(files[0])
            assert side is not None and (side["count"], side["max_id"]) == (len(sql_ids), max(sql_ids))
    finally:
        con.close()

    with Memory.open(home) as mem:
        report = mem.verify()
        assert report.ok, "\n".join(report.errors)
        assert not report.warnings, report.warnings
        assert report.checked["photos"] == len(shared) + nprocs * n_items
        assert report.checked["episodes"] == len(shared) + nprocs * n_items
        assert report.checked["users"] == 1 + nprocs
        names = sorted(c.name for c in mem.concepts("shared"))
        assert [n.lower() for n in names] == sorted(["bori", "han river"] + [f"p{p}" for p in range(nprocs)])
        for p in range(nprocs):
            assert sorted(c.name.lower() for c in mem.concepts(f"own{p}")) == ["bori", "han river"]
        checks = [("shared", i) for i in shared] + [(f"own{p}", j) for p in own for j in own[p]]
        for user, i in checks:
            hits = mem.search(user, embedding=vector(i), model_id=MODEL, k=1)
            assert hits and hits[0].photo.sha256 == _sha(i), (user, i)
            assert abs(hits[0].score - 1.0) < 1e-4 and _token(i) in hits[0].episodes[0].text
        shared_shas = {p.sha256 for p in mem.photos("shared")}
        assert shared_shas == {_sha(i) for i in shared}
        texts = "\n".join(h.episode.text for h in mem.history("shared"))
        assert not [i for i in forgotten if _token(i) in texts]
        for i in forgotten[:10]:
            hits = mem.search("shared", embedding=vector(i), model_id=MODEL, k=1)
            assert hits and hits[0].photo.sha256 != _sha(i) and hits[0].score < 0.9
        for p in range(nprocs):
            assert {x.sha256 for x in mem.photos(f"own{p}")} == {_sha(j) for j in own[p]}
            assert len(mem.history(f"own{p}")) == n_items
        assert len(mem.history("shared", "Bori")) == len(shared)
        assert len(mem.history("shared", "HAN RIVER")) == len(shared)
        assert len(mem.history("shared", "p0")) == n_items - n_forgotten // nprocs
    print(f"\nconcurrent writers: {nprocs} processes x ({2 * n_items} remembers + {n_forgotten // nprocs} "
          f"forgets) in {elapsed:.1f}s")


# --------------------------------------------------------------------------- 3. a live writer vs another writer
def test_live_writer_catches_up_with_another_writers_adds_and_forgets(tmp_path: Path) -> None:
    """Two open memories on one home (two SQLite connections, like two processes), deterministic order."""
    home = tmp_path / "home"
    a = Memory.open(home)
    b = Memory.open(home)
    try:
        a.add_user(USER)
        for i in (1, 2, 3):
            a.remember(USER, photo_bytes(i), _dialogue(i), embedding=vector(i), model_id=MODEL)
        assert a.search(USER, embedding=vector(1), model_id=MODEL, k=1)[0].photo.sha256 == _sha(1)
        b.remember(USER, photo_bytes(4), _dialogue(4), embedding=vector(4), model_id=MODEL)
        b.forget_photo(USER, photo_bytes(1))
        a.remember(USER, photo_bytes(5), _dialogue(5), embedding=vector(5), model_id=MODEL)
        for i in (2, 3, 4, 5):  # a must see b's add although its own add came in between
            hits = a.search(USER, embedding=vector(i), model_id=MODEL, k=1)
            assert hits and hits[0].photo.sha256 == _sha(i) and hits[0].score > 0.999, (i, hits)
        assert len(a.search(USER, embedding=vector(1), model_id=MODEL, k=4)) == 4
        # b forgets everything, including a's unsaved add: a's close must not write an index back
        a.remember(USER, photo_bytes(6), _dialogue(6), embedding=vector(6), model_id=MODEL)
        for i in (2, 3, 4, 5, 6):
            b.forget_photo(USER, photo_bytes(i))
        a.close()
        report = b.verify()
        assert report.ok, report.errors
        assert list((home / "index").glob("*.faiss")) == []
    finally:
        a.close()
        b.close()


def test_remember_racing_another_writers_forget_keeps_the_vector(tmp_path: Path, monkeypatch) -> None:
    """remember() checks for an existing vector before its write transaction; if another process forgets
    the photo in between, the photo must still be stored with its vector (searchable), not without."""
    home = tmp_path / "home"
    with Memory.open(home) as a, Memory.open(home) as b:
        a.add_user(USER)
        a.remember(USER, photo_bytes(1), _dialogue(1), embedding=vector(1), model_id=MODEL)
        real_write = a.store.write

        def write_after_forget():
            monkeypatch.setattr(a.store, "write", real_write)
            b.forget_photo(USER, photo_bytes(1))  # lands between a's checks and a's transaction
            return real_write()

        monkeypatch.setattr(a.store, "write", write_after_forget)
        again = a.remember(USER, photo_bytes(1), _dialogue(2), embedding=vector(1), model_id=MODEL)
        assert again.new_photo and again.embedding_id is not None
        hits = a.search(USER, embedding=vector(1), model_id=MODEL, k=1)
        assert hits and hits[0].photo.sha256 == _sha(1) and _token(2) in hits[0].episodes[0].text
        assert a.verify().ok
