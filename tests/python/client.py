"""A python-socketio 5 client for the end-to-end tests (tests/e2e/python.test.mjs).

It connects to the namespace with `auth.recovery = false` (python-socketio's handlers take a
fixed number of arguments, so it asks for today's wire, without offsets), joins a
conversation, and prints one JSON line per step and per event it gets, with how many
arguments each event without a handler of its own carried. It disconnects and exits when
its stdin closes; it reconnects by itself when its transport drops.
"""

import json
import sys
import threading

import socketio

URL, TOKEN, CONVERSATION, TRANSPORT = sys.argv[1:5]
NAMESPACE = "/messages"


# Handlers run on python-socketio's threads: one line at a time, whole.
_out = threading.Lock()


def say(**fields):
    line = json.dumps(fields) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


sio = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2)


@sio.on("connect", namespace=NAMESPACE)
def on_connect():
    ack = sio.call(
        "conversation:join", {"conversationId": CONVERSATION}, namespace=NAMESPACE, timeout=5
    )
    say(step="joined", ack=ack)


@sio.on("message:status", namespace=NAMESPACE)
def on_status(data):
    # Exactly one argument: an offset as a second one would raise TypeError here.
    say(step="status", data=data)


@sio.on("*", namespace=NAMESPACE)
def on_other(event, *args):
    say(step="event", event=event, args=len(args))


@sio.on("disconnect", namespace=NAMESPACE)
def on_disconnect(reason=None):
    say(step="disconnected")


def until_stdin_closes():
    sys.stdin.read()
    sio.disconnect()


sio.connect(
    URL,
    namespaces=[NAMESPACE],
    auth={"token": TOKEN, "recovery": False},
    transports=[TRANSPORT],
    wait_timeout=10,
)
say(step="connected", sid=sio.get_sid(NAMESPACE))
threading.Thread(target=until_stdin_closes, daemon=True).start()
sio.wait()
say(step="done")
