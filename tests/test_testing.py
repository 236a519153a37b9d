"""relay.testing: the helpers every test and benchmark starts relay with."""

import socket

from tests.relayproc import RelayProcess


def test_a_port_taken_between_pick_and_bind_is_picked_again():
    r = RelayProcess()
    taken = r.ws_port
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        with r:
            assert r.ws_port != taken and r.ready()
    finally:
        squatter.close()
