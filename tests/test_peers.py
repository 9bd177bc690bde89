"""hvdl/dist/peers.py: a rank's beacon answers while it lives, and the probe says why one does
not."""

from hvdl.dist import peers


def test_a_live_beacon_answers_and_a_closed_one_reads_as_a_gone_process():
    """Test that probe() is None for a listening beacon and 'process is gone' once it closes."""
    beacon = peers.Beacon()
    assert peers.probe("localhost", beacon.port) is None
    assert peers.probe("localhost", beacon.port) is None  # it keeps answering
    beacon.close()
    assert peers.probe("localhost", beacon.port) == "its process is gone"
    assert not beacon._thread.is_alive()  # not left blocked in accept until the process exits


def test_missing_names_only_the_ranks_that_do_not_answer():
    """Test that missing() lists the other ranks whose beacon is closed, by rank and host."""
    alive, dead = peers.Beacon(), peers.Beacon()
    dead.close()
    inventory = [{"rank": 0, "host": "localhost", "beacon_port": 1},  # the caller: not probed
                 {"rank": 1, "host": "localhost", "beacon_port": alive.port},
                 {"rank": 2, "host": "localhost", "beacon_port": dead.port},
                 {"rank": 3, "host": "no-such-host.invalid", "beacon_port": 9}]
    assert peers.missing(inventory, rank=0) == [
        "rank 2 on localhost: its process is gone",
        "rank 3 on no-such-host.invalid: 'no-such-host.invalid' does not resolve here"]
    alive.close()
