"""The Makefile rebuilds what embeds a set of files when a file of the set
is deleted, not only when one is newer: a deleted migration stayed in the
binary (build/gen/migrations.c was not regenerated; noticed in issue 24)."""
import os
import shutil
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def make(tree, target):
    # Run from `make test SAN=1`, the command line's variables reach a child
    # make through MAKEFLAGS (build/san then): this make is on its own.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SAN")}
    r = subprocess.run(["make", "-C", str(tree), target], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_a_deleted_migration_leaves_the_embedded_table(tmp_path):
    # The Makefile and what its generated sources are made from; the C
    # sources' directories may stay empty (only their wildcard is read).
    shutil.copy(os.path.join(ROOT, "Makefile"), tmp_path / "Makefile")
    for d in ("scripts", "store/migrations", "web", "clients/js"):
        os.makedirs(tmp_path / d, exist_ok=True)
    for f in ("scripts/embed-migrations.sh", "scripts/embed-web.sh", "clients/js/chatd-client.js"):
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    for d in ("store/migrations", "web"):
        for f in os.listdir(os.path.join(ROOT, d)):
            shutil.copy(os.path.join(ROOT, d, f), tmp_path / d / f)
    extra = tmp_path / "store/migrations/999_made_by_the_test.sql"
    extra.write_text("SELECT 1;\n")
    gen = tmp_path / "build/gen/migrations.c"
    make(tmp_path, "build/gen/migrations.c")
    assert "999_made_by_the_test" in gen.read_text()
    # Nothing changed: nothing is made again.
    assert "embed-migrations" not in make(tmp_path, "build/gen/migrations.c")
    extra.unlink()
    make(tmp_path, "build/gen/migrations.c")
    text = gen.read_text()
    assert "999_made_by_the_test" not in text and "012_message_by_id" in text
    # The same for the page's files.
    page = tmp_path / "web/made-by-the-test.css"
    page.write_text("p {}\n")
    make(tmp_path, "build/gen/web_assets.c")
    assert "made-by-the-test.css" in (tmp_path / "build/gen/web_assets.c").read_text()
    page.unlink()
    make(tmp_path, "build/gen/web_assets.c")
    assert "made-by-the-test.css" not in (tmp_path / "build/gen/web_assets.c").read_text()
