"""A course controller: asks every node LEADER_INFO, then STOREs one entry at the leader.

Binds 0.0.0.0:5555 as the course's controllers do, so the nodes' replies come back to port 5555
of this container. Fields are filled as course controllers fill them: `term`, `key` and `value`
null where unused. Prints one JSON object: {"leader_info": {node: reply}, "store": reply}.
"""
import json
import socket
import sys
import time

NODES = ["node%d" % i for i in range(1, 6)]
PORT = 5555
key, value = sys.argv[1], sys.argv[2]

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", PORT))


def ask(node, request, k=None, v=None, timeout=5.0):
    """The first reply from `node` to `request`, or None after `timeout` seconds."""
    msg = {"sender_name": "Controller", "request": request, "term": None, "key": k, "value": v}
    sock.sendto(json.dumps(msg).encode("utf-8"), (node, PORT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            break
        reply = json.loads(data.decode("utf-8"))
        if reply.get("sender_name") == node and reply.get("request") == request:
            return reply
    return None


infos = {node: ask(node, "LEADER_INFO") for node in NODES}
leaders = {r["value"] for r in infos.values() if r and r.get("value")}
store = ask(leaders.pop(), "STORE", key, value) if len(leaders) == 1 else None
print(json.dumps({"leader_info": infos, "store": store}))
