"""A site's failure reaches the coordinator's reports as one line: the error's
class and message, without Ray's wrapping, the traceback or colour codes."""

from fedvault.server.failure_line import one_line

RAY = (
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=4242, ip=127.0.0.1)\n"
    "Traceback (most recent call last):\n"
    '  File "/x/app.py", line 3, in train\n'
    "    raise IntegrityError()\n"
    "fedvault.common.errors.IntegrityError: integrity check failed\n"
)


def test_a_ray_traceback_becomes_its_error_line():
    assert (
        one_line(RAY) == "fedvault.common.errors.IntegrityError: integrity check failed"
    )


def test_a_one_line_reason_is_kept_and_a_long_one_cut():
    assert (
        one_line("NODE_UNAVAILABLE: the site left") == "NODE_UNAVAILABLE: the site left"
    )
    cut = one_line("ValueError: " + "x" * 1000)
    assert len(cut) == 300 and cut.endswith("…")
