"""The labelling state: refused labels, atomic saves, name collisions, undo, claims that keep two
tabs apart, crash recovery, restart, queue order and review renames."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from captcha_recognize.labelling import store as labelstore
from captcha_recognize.data.folders import list_images
from captcha_recognize.labelling.files import Conflict, Refused, label_problem
from captcha_recognize.labelling.store import Store

CLIENT, OTHER = "tab-a", "tab-b"


@pytest.fixture
def raw(tmp_path, digits_dir) -> Path:
    """Eight captchas named without their labels, and one file that is no image."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for i, f in enumerate(list_images([digits_dir])[:8]):
        shutil.copy(f, folder / f"img_{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def make_store(tmp_path: Path, raw: Path, alphabet: str | None = None) -> Store:
    store = Store(tmp_path / "out.sqlite", "label", tmp_path / "out", alphabet)
    files = list_images([raw])
    store.scan([f for f in files if f.name != "broken.png"], [(raw / "broken.png", "not an image")])
    return store


def out_files(store: Store) -> list[str]:
    return sorted(p.name for p in store.out.iterdir())


@pytest.mark.parametrize("label, why", [
    ("", "empty"), ("a/b", "file name"), ("a\\b", "file name"), ("a:b", "file name"), ("a*b", "file name"),
    ("a?b", "file name"), ('a"b', "file name"), ("a<b", "file name"), ("a>b", "file name"), ("a|b", "file name"),
    ("a\tb", "file name"), ("a\x00b", "file name"), ("a.b", "label ends at"), ("a_b", "label ends at"),
    ("ab c", "letters and digits"), ("x" * 101, "longer than")])
def test_labels_that_cannot_be_file_names_are_refused(label, why):
    assert why in label_problem(label)
    if why in ("file name", "label ends at"):  # the reason is the character, even where an alphabet allows it
        assert why in label_problem(label, alphabet="abcx " + label)


def test_the_alphabet_limits_labels(tmp_path):
    assert label_problem("3568") is None and label_problem("b5pNn") is None
    assert "not in the alphabet" in label_problem("12a4", "0123456789")
    assert label_problem("a-b", "ab-") is None


def test_a_label_copies_the_image_and_keeps_the_source(tmp_path, raw):
    store = make_store(tmp_path, raw)
    item = store.claim(CLIENT, n=1)[0]
    row = store.label(CLIENT, item.id, "1234", proposal="1234")
    assert out_files(store) == ["1234.png"]
    assert (store.out / "1234.png").read_bytes() == item.path.read_bytes() and item.path.exists()
    assert (row.status, row.label, row.saved_as.name, row.accepted) == ("labelled", "1234", "1234.png", True)
    assert store.stats()["labelled"] == 1 and store.stats()["accepted"] == 1


def test_a_repeated_text_gets_the_next_free_suffix(tmp_path, raw):
    store = make_store(tmp_path, raw)
    (store.out / "1234_2.png").write_bytes(b"labelled by hand")
    for item in store.claim(CLIENT, n=3):
        store.label(CLIENT, item.id, "1234")
    assert out_files(store) == ["1234.png", "1234_2.png", "1234_3.png", "1234_4.png"]
    assert (store.out / "1234_2.png").read_bytes() == b"labelled by hand"


def test_a_refused_label_writes_nothing(tmp_path, raw):
    store = make_store(tmp_path, raw, alphabet="0123456789")
    item = store.claim(CLIENT, n=1)[0]
    with pytest.raises(Refused, match="not in the alphabet"):
        store.label(CLIENT, item.id, "12a4")
    assert out_files(store) == [] and store.item(item.id).status == "todo"


def test_a_failed_write_leaves_no_file_and_the_image_to_label(tmp_path, raw, monkeypatch):
    store = make_store(tmp_path, raw)
    item = store.claim(CLIENT, n=1)[0]

    def disk_full(src, dst):
        raise OSError("no space left on device")
    monkeypatch.setattr(labelstore.os, "replace", disk_full)
    with pytest.raises(Conflict, match="cannot write .*1234.png: no space left on device; nothing was saved"):
        store.label(CLIENT, item.id, "1234")
    assert out_files(store) == []  # no temporary file left either
    assert store.item(item.id).status == "todo"
    monkeypatch.undo()
    store.label(CLIENT, item.id, "1234")
    assert out_files(store) == ["1234.png"]


def test_recover_finishes_or_rolls_back_what_a_crash_interrupted(tmp_path, raw):
    store = make_store(tmp_path, raw)
    a, b, c = store.claim(CLIENT, n=3)
    shutil.copy(a.path, store.out / "1111.png")  # the copy reached its place, the state did not
    (store.out / f"{labelstore.TMP_PREFIX}dead.tmp").write_bytes(b"half")
    with store._write() as con:
        for status, name, row in (("saving", "1111.png", a), ("saving", "2222.png", b), ("undoing", "3333.png", c)):
            con.execute("UPDATE items SET status = ?, saved_as = ? WHERE id = ?",
                        (status, str(store.out / name), row.id))
    reopened = Store(store.db, "label", store.out)
    assert reopened.recover() == 3
    assert [reopened.item(i.id).status for i in (a, b, c)] == ["labelled", "todo", "todo"]
    assert out_files(reopened) == ["1111.png"]


def test_undo_removes_the_copy_and_gives_the_image_back(tmp_path, raw):
    store = make_store(tmp_path, raw)
    item = store.claim(CLIENT, n=1)[0]
    store.label(CLIENT, item.id, "1234")
    assert store.undo(OTHER) is None  # another tab cannot undo this tab's label
    row, old = store.undo(CLIENT)
    assert (row.id, row.status, old, row.saved_as) == (item.id, "todo", "1234", None)
    assert out_files(store) == [] and item.path.exists()
    assert item.id not in {r.id for r in store.claim(OTHER, n=8)}  # claimed again by the tab that undid it
    assert store.undo(CLIENT) is None


def test_undo_of_skip_and_unreadable_puts_the_image_back_in_front(tmp_path, raw):
    store = make_store(tmp_path, raw)
    first = store.todo()[0]
    store.skip(CLIENT, first.id)
    assert store.todo()[-1].id == first.id  # skipped: back of the queue
    store.undo(CLIENT)
    assert store.todo()[0].id == first.id
    store.mark_unreadable(CLIENT, first.id)
    assert first.id not in [r.id for r in store.todo()]
    assert (first.path.name, "marked on the page") in store.unreadable()
    store.undo(CLIENT)
    assert store.todo()[0].id == first.id and store.item(first.id).status == "todo"


def test_undo_keeps_a_copy_that_changed_on_disk(tmp_path, raw):
    store = make_store(tmp_path, raw)
    item = store.claim(CLIENT, n=1)[0]
    store.label(CLIENT, item.id, "1234")
    (store.out / "1234.png").write_bytes(b"edited since")
    with pytest.raises(Conflict, match="differs"):
        store.undo(CLIENT)
    assert (store.out / "1234.png").read_bytes() == b"edited since" and store.item(item.id).status == "labelled"


def test_two_tabs_are_given_different_images_and_cannot_label_each_others(tmp_path, raw):
    store = make_store(tmp_path, raw)
    mine, theirs = store.claim(CLIENT, n=3), store.claim(OTHER, n=3)
    assert not {r.id for r in mine} & {r.id for r in theirs}
    with pytest.raises(Conflict, match="another tab"):
        store.label(OTHER, mine[0].id, "1234")
    store.label(CLIENT, mine[0].id, "1234")
    with pytest.raises(Conflict, match="already labelled"):
        store.label(CLIENT, mine[0].id, "5678")
    assert out_files(store) == ["1234.png"]


def test_an_expired_claim_can_be_taken_over(tmp_path, raw, monkeypatch):
    store = make_store(tmp_path, raw)
    monkeypatch.setattr(labelstore, "LEASE_S", -1.0)
    mine = store.claim(CLIENT, n=1)
    assert store.claim(OTHER, n=1)[0].id == mine[0].id


def test_concurrent_saves_of_one_image_write_it_once(tmp_path, raw):
    store = make_store(tmp_path, raw)
    item = store.todo()[0]
    results = []

    def save(k: int) -> None:
        try:  # each thread with its own store object, as another process would have
            Store(store.db, "label", store.out).label(f"tab-{k}", item.id, f"{k}{k}{k}{k}")
            results.append("saved")
        except Conflict:
            results.append("conflict")
    threads = [threading.Thread(target=save, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict"] * 7 + ["saved"]
    assert len(out_files(store)) == 1


def test_unreadable_images_are_listed_and_never_shown(tmp_path, raw):
    store = make_store(tmp_path, raw)
    assert store.unreadable() == [("broken.png", "not an image")]
    shown = store.claim(CLIENT, n=20)
    assert len(shown) == 8 and "broken.png" not in {r.path.name for r in shown}
    assert store.stats()["unreadable"] == 1 and store.stats()["remaining"] == 8


def test_a_restart_resumes_with_the_labelled_images_done(tmp_path, raw):
    store = make_store(tmp_path, raw)
    item = store.claim(CLIENT, n=1)[0]
    store.label(CLIENT, item.id, "1234")
    gone = next(r for r in store.todo())
    gone.path.unlink()  # a source removed meanwhile is no longer offered
    again = make_store(tmp_path, raw)  # same state file, same folder scanned again
    assert again.stats()["labelled"] == 1 and again.stats()["remaining"] == 6
    assert gone.id not in {r.id for r in again.todo()}
    assert item.id not in {r.id for r in again.claim(OTHER, n=20)}


def test_the_least_confident_come_first_and_skipped_ones_last(tmp_path, raw):
    store = make_store(tmp_path, raw)
    rows = store.todo()
    store.set_proposals({r.id: ("1234", (k + 1) / 10) for k, r in enumerate(reversed(rows))})
    order = [r.id for r in store.todo()]
    assert order == [r.id for r in reversed(rows)]
    store.skip(CLIENT, order[0])
    assert [r.id for r in store.claim(CLIENT, n=8)] == order[1:] + order[:1]


def test_review_renames_in_place_keeps_right_names_and_undoes(tmp_path, digits_dir):
    folder = tmp_path / "labelled"
    shutil.copytree(digits_dir, folder)
    files = list_images([folder])
    store = Store(tmp_path / "labelled.sqlite", "review", folder)
    store.add_review([{"path": files[0], "label": "0000", "prediction": "9999", "confidence": 0.5},
                      {"path": files[1], "label": files[1].stem[:4], "prediction": "8888", "confidence": 0.9}])
    first, second = store.claim(CLIENT, n=2)
    assert first.path == files[1].resolve()  # the most confident disagreement first
    store.label(CLIENT, first.id, first.named)  # the name was right
    store.label(CLIENT, second.id, "9999")
    assert files[1].exists() and not files[0].exists() and (folder / "9999.png").exists()
    assert store.stats()["renamed"] == 1
    row, old = store.undo(CLIENT)
    assert old == "9999" and files[0].exists() and not (folder / "9999.png").exists()
    assert len(list_images([folder])) == len(files)


def test_labels_per_minute_count_from_the_latest_pause(tmp_path, raw):
    store = make_store(tmp_path, raw)
    items = store.todo()[:5]
    for item in items:
        store.label(CLIENT, item.id, "1234")
    with store._write() as c:
        for item, at in zip(items, [0.0, 1000.0, 1010.0, 1020.0, 1030.0]):
            c.execute("UPDATE items SET labelled_at = ? WHERE id = ?", (at, item.id))
    assert store.stats()["per_minute"] == 6.0  # 3 labels in 30 s after a pause; the one before it not counted


def test_an_image_that_reads_again_is_offered_again(tmp_path, raw, digits_dir):
    store = make_store(tmp_path, raw)
    item = store.todo()[0]
    store.mark_unreadable(CLIENT, item.id)
    shutil.copy(list_images([digits_dir])[0], raw / "broken.png")  # fixed on disk
    store.scan(list_images([raw]))
    assert store.unreadable() == [(item.path.name, labelstore.MARKED)]  # marked by hand stays marked
    assert "broken.png" in {r.path.name for r in store.todo()}
