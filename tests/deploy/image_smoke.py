"""Smoke test of the built image, run by scripts/image.sh (`make image`), not
by `make test`: CHATD_BIN is a wrapper that runs the image's chatd under
chroot in the image's mounted filesystem, as the image's user.

An all-in-one chatd (embedded Kafka) from the image serves two clients who
chat in a room, against Redis and PostgreSQL on loopback; the image's
HEALTHCHECK command is run inside the image against it; SIGTERM ends it
with exit 0 (the fixture checks).
"""
import json
import os
import subprocess

import pytest

from chatlib import arun, check_msg, http_request, uid

ROOT = os.environ.get("CHATD_IMAGE_ROOT")
HEALTHCHECK = os.environ.get("CHATD_IMAGE_HEALTHCHECK")


@pytest.fixture(scope="module")
def image_instance(start_all_instance):
    if not ROOT or not HEALTHCHECK:
        pytest.fail("run through scripts/image.sh (CHATD_IMAGE_ROOT, CHATD_IMAGE_HEALTHCHECK unset)",
                    pytrace=False)
    return start_all_instance("image-all")


def test_image_chatd_serves_a_chat(image_instance):
    inst = image_instance
    room = uid("img")

    async def body():
        a = await inst.client(uid("a"))
        b = await inst.client(uid("b"))
        assert await a.join(room) == 0
        await b.join(room)
        ack = await a.send(room, "hello from the image")
        await b.wait_seqs(room, [1])
        m = b.msgs(room)[0]
        check_msg(m, room=room, text="hello from the image")
        assert m["id"] == ack["id"]
        h = await b.sync(room)
        assert [x["text"] for x in h["messages"]] == ["hello from the image"], h
        await a.close()
        await b.close()
    arun(body())
    st, _, body = http_request(inst.port, "GET", "/metrics")
    assert st == 200 and b"chatd_acks_total 1" in body


def test_image_healthcheck_command(image_instance):
    """The HEALTHCHECK of the image config, run in the image, passes against a
    live chatd and fails where nothing listens. Its port is the image's
    default (8080); the test instance listens on a free port, so the port
    number is the only thing replaced."""
    test = json.loads(HEALTHCHECK)
    assert test[0] == "CMD", test
    argv = test[1:]
    assert any("/dev/tcp/127.0.0.1/8080" in a for a in argv), argv

    def run(port):
        cmd = [a.replace("/dev/tcp/127.0.0.1/8080", f"/dev/tcp/127.0.0.1/{port}") for a in argv]
        return subprocess.run(["chroot", "--userspec=10001:10001", ROOT] + cmd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)

    ok = run(image_instance.port)
    assert ok.returncode == 0, ok.stdout
    from chatlib import free_port
    dead = run(free_port())
    assert dead.returncode != 0, "health check passed with nothing listening"
