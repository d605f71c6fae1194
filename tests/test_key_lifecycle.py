"""Key lifecycle of the encrypted store (issue 14): bounded seals per data key, nonces
never reused by a cloned process, keys gone after shred and close, strict key files,
values that seal also open, an honest shred, and no keyring left in a backup folder."""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from percolate_node.auth import NodeAuthenticator, generate_token_file
from percolate_node.store import (EncryptedStore, KekFile, Put, StoreError, TamperedValueError, generate_kek,
                                  load_kek, restore)
from percolate_node.store.crypto import Sealer
from percolate_node.store.keyring import Keyring, write_keyring_file
from percolate_node.store.layout import DOCUMENTS, KEYS, LOG
from percolate_common.processes import wait_for

ROOT = Path(__file__).resolve().parents[1]


def raw_family(path: Path, cf: str) -> dict[bytes, bytes]:
    """One column family as it lies on disk, read with plain rocksdict."""
    families = Rdict.list_cf(str(path), Options(raw_mode=True))
    db = Rdict(str(path), Options(raw_mode=True), column_families={f: Options(raw_mode=True) for f in families})
    view = db.get_column_family(cf)
    found = dict(view.items())
    view.close()
    db.close()
    return found


# 1. seals per DEK: counted, persisted, bounded -----------------------------------------------------


def _seals_per_dek(path) -> dict[int, int]:
    """Values on disk sealed by each DEK: data values and change-log records (one per batch)."""
    per_dek: dict[int, int] = {}
    for family in (DOCUMENTS, LOG):
        for sealed in raw_family(path, family).values():
            dek = int.from_bytes(sealed[1:5], "big")
            per_dek[dek] = per_dek.get(dek, 0) + 1
    return per_dek


def test_seal_count_survives_restart_and_rotates_before_the_bound(tmp_path):
    path, kek_file = tmp_path / "db", tmp_path / "kek"
    generate_kek(kek_file)
    written = 0
    with EncryptedStore.open(path, "tenant-a", kek_file, seal_limit=40, seal_block=8) as store:
        for _ in range(5):
            store.write([Put(DOCUMENTS, b"%04d" % written, b"v")])
            written += 1
        seals = store.stats()["seals"]
        assert store.stats()["seal_limit"] == 40
    # while running the count is exact: every value and every log record sealed so far
    assert seals == _seals_per_dek(path)[1] == 5 + len(raw_family(path, LOG))
    reserved = json.loads(raw_family(path, KEYS)[b"seals/\0\0\0\1"])["reserved"]
    assert seals <= reserved < seals + 8, "seals are reserved a block (8) at a time, before they happen"
    with EncryptedStore.open(path, "tenant-a", kek_file, seal_limit=40, seal_block=8) as store:
        assert store.seal_count() == reserved, "a restart counts every reserved seal as used"
        while store.stats()["active_dek"] == 1:
            store.write([Put(DOCUMENTS, b"%04d" % written, b"v"), Put(DOCUMENTS, b"%04d" % (written + 1), b"v")])
            written += 2
        assert store.stats()["deks"] == [1, 2] and store.seal_count() <= 8
    per_dek = _seals_per_dek(path)
    # DEK 1 sealed what it sealed before the restart, gave up the rest of that reservation,
    # then sealed up to (never past) the bound; DEK 2 took over
    assert per_dek[1] <= 40 - (reserved - seals) and per_dek[1] >= 40 - (reserved - seals) - 4, per_dek
    assert set(per_dek) == {1, 2} and written > 5

    # A keyring from before seals were counted: the store starts a fresh DEK at once.
    db = Rdict(str(path), Options(raw_mode=True),
               column_families={cf: Options(raw_mode=True) for cf in Rdict.list_cf(str(path), Options(raw_mode=True))})
    keys = db.get_column_family(KEYS)
    del keys[b"seals/\0\0\0\2"]
    keys.close()
    db.close()
    with EncryptedStore.open(path, "tenant-a", kek_file, seal_limit=40, seal_block=8) as store:
        assert store.stats()["active_dek"] == 3 and store.seal_count() == 0
        with pytest.raises(StoreError, match="is over the 40 one data key may seal"):
            store.write([Put(DOCUMENTS, b"x%d" % i, b"v") for i in range(41)])


# 2. a raw fork syscall never reuses pooled nonces ---------------------------------------------------------------

RAW_FORK = textwrap.dedent("""
    import ctypes, json, os, sys
    from percolate_node.store import _gcm
    if sys.argv[1] == "pid check":
        _gcm._use_pid_check(True)
    keys = _gcm.Keys({1: os.urandom(32)}, 1)
    keys.seal(b"c", b"k", b"fills the nonce pool")
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    # fork by system call: no pthread_atfork handlers run, no Python fork hooks
    pid = libc.syscall(57) if sys.argv[2] == "x86_64" else libc.syscall(220, 17, 0, 0, 0, 0)
    if pid == 0:
        os.write(write_end, b"".join(keys.seal(b"c", b"k", b"x")[5:17] for _ in range(16)))
        os._exit(0)
    assert pid > 0, ctypes.get_errno()
    os.waitpid(pid, 0)
    theirs = os.read(read_end, 16 * 12)
    ours = b"".join(keys.seal(b"c", b"k", b"x")[5:17] for _ in range(16))
    print(json.dumps({"guard": getattr(keys, "fork_guard", None), "theirs": theirs.hex(), "ours": ours.hex()}))
""")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="raw fork syscall number unknown")
@pytest.mark.parametrize("guard", ["wipe-on-fork", "pid check"])
def test_a_raw_fork_clone_draws_its_own_nonces(guard):
    done = subprocess.run([sys.executable, "-c", RAW_FORK, guard, platform.machine()], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    theirs, ours = bytes.fromhex(result["theirs"]), bytes.fromhex(result["ours"])
    assert len(theirs) == len(ours) == 16 * 12
    split = lambda blob: {blob[i:i + 12] for i in range(0, len(blob), 12)}  # noqa: E731
    assert len(split(theirs)) == len(split(ours)) == 16
    assert not split(theirs) & split(ours), "the clone handed out the parent's pooled nonces"
    assert result["guard"] == guard


# 3. keys gone after shred and close; the KEK read only when needed ------------------------------------------------


@pytest.mark.parametrize("end", ["shred", "close"])
def test_no_key_is_usable_after_shred_or_close(tmp_path, end):
    kek_file = tmp_path / "kek"
    kek = generate_kek(kek_file)
    store = EncryptedStore.open(tmp_path / "db", "tenant-a", kek_file)
    store.write([Put(DOCUMENTS, b"k", b"secret")])
    sealer, sealed = store._sealer, store._views[DOCUMENTS][b"k"]
    assert sealer.open(DOCUMENTS, b"k", sealed) == b"secret"
    assert all(value is not kek and value != kek for value in vars(store).values()), "the KEK stays in memory"
    getattr(store, end)()
    with pytest.raises(StoreError, match="destroyed"):
        sealer.open(DOCUMENTS, b"k", sealed)  # even through a reference taken before
    with pytest.raises(StoreError, match="destroyed"):
        sealer.seal(DOCUMENTS, b"k", b"more")
    assert store._keyring is None and store._kek is None
    with pytest.raises(StoreError, match="closed"):
        store.get(DOCUMENTS, b"k")


def test_kek_is_read_from_its_file_only_when_needed(tmp_path):
    kek_file, elsewhere = tmp_path / "kek", tmp_path / "kek.away"
    generate_kek(kek_file)
    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek_file) as store:
        kek_file.rename(elsewhere)  # reads and writes need no KEK
        store.write([Put(DOCUMENTS, b"k", b"v")])
        assert store.get(DOCUMENTS, b"k") == b"v"
        with pytest.raises(StoreError, match="does not exist"):
            store.rotate_dek()  # a rotation does
        elsewhere.rename(kek_file)
        assert store.rotate_dek() == 2
        generate_kek(elsewhere)
        kek_file.unlink()
        elsewhere.rename(kek_file)  # another KEK in its place: never used to wrap a DEK
        with pytest.raises(StoreError, match="no longer opens this keyring"):
            store.rotate_dek()
        assert store.stats()["deks"] == [1, 2]


# 4. the keyring's repr ----------------------------------------------------------------------------------------------


def test_keyring_repr_shows_no_key():
    keyring = Keyring.new("tenant-a")
    keyring.add_dek()
    shown = repr(keyring) + str(keyring)
    for secret in [keyring.hmac_key, *keyring.deks.values()]:
        assert repr(secret)[2:-1] not in shown and secret.hex() not in shown
    assert "tenant-a" in shown and "[1, 2]" in shown


# 5. key files: the KEK, the exported keyring, the bearer token -------------------------------------------------------


def test_kek_file_with_group_or_other_access_is_refused(tmp_path):
    path = tmp_path / "kek"
    kek = generate_kek(path)
    for mode in (0o640, 0o604, 0o660, 0o644):
        path.chmod(mode)
        with pytest.raises(StoreError, match=f"open to other users \\(mode {mode:04o}\\)"):
            load_kek(path)
        with pytest.raises(StoreError, match="open to other users"):
            EncryptedStore.open(tmp_path / "db", "tenant-a", path)
    assert not (tmp_path / "db").exists()
    path.chmod(0o440)  # a Kubernetes Secret with fsGroup: allowed only when the override says so
    assert load_kek(path, allow_group_read=True) == KekFile(path, allow_group_read=True).read() == kek
    for mode in (0o460, 0o444):
        path.chmod(mode)
        with pytest.raises(StoreError, match="group read is allowed, nothing else"):
            load_kek(path, allow_group_read=True)
    path.chmod(0o600)
    assert load_kek(path) == kek
    if os.geteuid() == 0:
        os.chown(path, 12345, -1)
        with pytest.raises(StoreError, match="belongs to uid 12345"):
            load_kek(path)


def test_keyring_export_is_created_exclusively(tmp_path, kek):
    with EncryptedStore.open(tmp_path / "db", "tenant-a", kek) as store:
        stale = tmp_path / "keyring.json.partial"  # what the old export wrote through: open to all
        stale.write_text("stale")
        stale.chmod(0o644)
        store.export_keyring(tmp_path / "keyring.json")
        assert (tmp_path / "keyring.json").stat().st_mode & 0o777 == 0o600
        assert stale.read_text() == "stale"

        target = tmp_path / "someone-elses-file"
        target.write_text("not yours")
        stale.unlink()
        stale.symlink_to(target)  # a planted link must not redirect the keyring
        store.export_keyring(tmp_path / "keyring.json")
        assert target.read_text() == "not yours"
        exported = tmp_path / "keyring.json"
        assert not exported.is_symlink() and exported.stat().st_mode & 0o777 == 0o600
        assert json.loads(exported.read_text())["tenant_id"] == "tenant-a"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "keyring.json", "keyring.json.partial",
                                                              "someone-elses-file"], "a temporary file was left"
    with pytest.raises(StoreError, match="cannot write keyring file"):
        write_keyring_file(tmp_path / "no-such-folder" / "keyring.json", "tenant-a", {})


def test_bearer_token_file_is_checked_like_a_key(tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o644)
    with pytest.raises(ValueError, match=r"open to other users \(mode 0644\)"):
        NodeAuthenticator("tenant-a", token)
    token.chmod(0o640)
    with pytest.raises(ValueError, match="open to other users"):
        NodeAuthenticator("tenant-a", token)
    assert NodeAuthenticator("tenant-a", token, allow_group_read=True)._token == b"0123456789abcdef0123"
    token.chmod(0o600)
    assert NodeAuthenticator("tenant-a", token)._token == b"0123456789abcdef0123"
    token.write_text("short")
    with pytest.raises(ValueError, match="at least 16 characters"):
        NodeAuthenticator("tenant-a", token)
    token.write_text("x" * 5000)
    with pytest.raises(ValueError, match="over 4096 bytes"):
        NodeAuthenticator("tenant-a", token)
    made = tmp_path / "made"
    generate_token_file(made)
    assert made.stat().st_mode & 0o777 == 0o600 and len(NodeAuthenticator("tenant-a", made)._token) >= 32
    with pytest.raises(FileExistsError):
        generate_token_file(made)
    done = run_cli("keys", "token", str(tmp_path / "by-cli"), env={})
    assert done.returncode == 0 and (tmp_path / "by-cli").stat().st_mode & 0o777 == 0o600, done.stderr
    assert run_cli("keys", "token", str(tmp_path / "by-cli"), env={}).returncode == 2  # never over a file


# 6. what seals also opens; every extension error is a store error ---------------------------------------------------


def test_a_value_that_could_never_be_opened_is_refused_at_seal_time(store):
    # bytes(n) is calloc'd: untouched zero pages, so these cost no real memory unless sealed
    too_big = bytes(2**30 - 20)  # sealed, it would be over what open accepts (2**30 - 1)
    with pytest.raises(StoreError, match="cannot seal documents/626967: a value of 1073741804 bytes is over"):
        store.write([Put(DOCUMENTS, b"small", b"v"), Put(DOCUMENTS, b"big", too_big)])
    assert store.get(DOCUMENTS, b"small") is None
    sealer = Sealer("tenant-a", {1: os.urandom(32)})
    with pytest.raises(StoreError, match="cannot seal"):
        sealer.seal(DOCUMENTS, b"big", too_big)
    with pytest.raises(TamperedValueError, match="longer than any sealed value"):
        sealer.open(DOCUMENTS, b"big", bytes([1, 0, 0, 0, 1]) + bytes(2**30))
    for bad in ("text", None):
        with pytest.raises(StoreError, match="open takes bytes"):
            sealer.open(DOCUMENTS, b"k", bad)
        with pytest.raises(StoreError, match="seal takes bytes"):
            sealer.seal(DOCUMENTS, b"k", bad)


# 7. shred says exactly what it destroyed -----------------------------------------------------------------------------


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "percolate_node.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env}, cwd=ROOT)


def test_shred_destroys_what_it_says(tmp_path):
    data, kek_file, keyring = tmp_path / "data", tmp_path / "kek.bin", tmp_path / "keyring.json"
    env = {"PERCOLATE_NODE_TENANT_ID": "acme", "PERCOLATE_NODE_DATA_DIR": str(data),
           "PERCOLATE_NODE_KEK_FILE": str(kek_file)}
    kek = generate_kek(kek_file)
    with EncryptedStore.open(data, "acme", kek_file) as store:
        store.write([Put(DOCUMENTS, b"k", b"kept in the backup")])
        store.backup(tmp_path / "backup")
        store.export_keyring(keyring)

    refused = run_cli("admin", "shred", env=env)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "percolate: shred destroys this tenant's live keyring: the data directory can never be read again. "
        "Backups stay readable with an exported keyring and the KEK until those are destroyed too "
        "(--destroy-kek also deletes the KEK file). Repeat with --yes")
    done = run_cli("admin", "shred", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"tenant acme: the live keyring in {data} is destroyed: that data can never be read again. "
        f"NOT destroyed: the KEK file {kek_file} and any exported keyring file; backups stay readable with them. "
        "Delete every exported keyring, or rerun with --destroy-kek to delete the KEK as well.")
    restore(tmp_path / "backup", tmp_path / "restored", kek, keyring)  # true: the backup still opens
    with EncryptedStore.open(tmp_path / "restored", "acme", kek, create=False) as restored:
        assert restored.get(DOCUMENTS, b"k") == b"kept in the backup"

    done = run_cli("admin", "shred", "--yes", "--destroy-kek", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"tenant acme: the live keyring in {data} is destroyed: that data can never be read again. "
        f"The KEK file {kek_file} was overwritten and deleted: every backup and exported keyring of this tenant "
        "is unreadable too, unless a copy of that KEK exists elsewhere (a secret store, a backup of its folder): "
        "destroy those copies yourself.")
    assert not kek_file.exists()
    with pytest.raises(StoreError, match="does not exist"):
        restore(tmp_path / "backup", tmp_path / "again", load_kek(kek_file), keyring)


# 8. a kill inside the backup window leaves no keyring in the backup folder --------------------------------------------

BACKUP_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from percolate_node.store import EncryptedStore, Put, backup
    db, dest, marker = (Path(arg) for arg in sys.argv[1:4])

    def pause(partial):
        marker.write_text(str(partial))
        time.sleep(600)  # killed here, between the checkpoint and dropping the keyring

    backup._after_checkpoint = pause
    with EncryptedStore.open(db, "tenant-a", bytes.fromhex(sys.argv[4])) as store:
        store.write([Put("documents", b"k", b"v")])
        store.backup(dest)
    print("finished without pausing", flush=True)
""")


def test_a_kill_inside_the_backup_window_leaves_no_keyring_in_the_backup_folder(tmp_path, kek):
    db, dest, marker = tmp_path / "db", tmp_path / "backup", tmp_path / "paused"
    child = subprocess.Popen([sys.executable, "-c", BACKUP_CHILD, str(db), str(dest), str(marker), kek.hex()],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, "the backup to reach its pause point")
        assert child.poll() is None, f"the backup never paused: {child.communicate()}"
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    partial = Path(marker.read_text())
    assert not dest.exists(), "a killed backup left a folder at its destination"
    assert partial.parent == tmp_path and partial.name.startswith(".backup.partial-")
    assert KEYS in Rdict.list_cf(str(partial), Options(raw_mode=True)), "the kill came after the drop"
    with EncryptedStore.open(db, "tenant-a", kek) as store:
        original_dek = store.stats()["active_dek"]
        store.export_keyring(tmp_path / "keyring.json")
        store.backup(dest)  # the next backup clears what the crash left
    assert not partial.exists() and KEYS not in Rdict.list_cf(str(dest), Options(raw_mode=True))
    restore(dest, tmp_path / "restored", kek, tmp_path / "keyring.json")
    with EncryptedStore.open(tmp_path / "restored", "tenant-a", kek) as restored:
        assert restored.get(DOCUMENTS, b"k") == b"v"
        assert restored.stats()["active_dek"] == original_dek + 1, "a restored copy seals with a DEK of its own"


def test_shred_says_so_when_a_mounted_kek_cannot_be_destroyed(tmp_path):
    """A KEK mounted the way Kubernetes mounts a Secret (a symlink into a read-only folder):
    the keyring goes, and the message says the KEK stayed, with a non-zero exit."""
    data, real = tmp_path / "data", tmp_path / "..data" / "kek.bin"
    real.parent.mkdir()
    generate_kek(real)
    (tmp_path / "kek.bin").symlink_to(real)
    env = {"PERCOLATE_NODE_TENANT_ID": "acme", "PERCOLATE_NODE_DATA_DIR": str(data),
           "PERCOLATE_NODE_KEK_FILE": str(tmp_path / "kek.bin")}
    with EncryptedStore.open(data, "acme", tmp_path / "kek.bin") as store:
        store.write([Put(DOCUMENTS, b"k", b"v")])
    done = run_cli("admin", "shred", "--yes", "--destroy-kek", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the live keyring" in done.stderr and "is destroyed" in done.stderr
    assert "could NOT be destroyed" in done.stderr and real.exists()
    assert "Traceback" not in done.stderr
