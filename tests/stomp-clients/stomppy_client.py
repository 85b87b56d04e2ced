"""Drives stomp.py, unchanged, against a Switchyard gateway.

Usage: python3 stomppy_client.py <port> <jwt> <room-topic>
Prints one JSON line per observation; exits 0 when every step worked.
"""
import json
import sys
import threading
import time

import stomp


def main():
    port, token, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    got = threading.Event()
    heartbeats = []

    class Listener(stomp.ConnectionListener):
        def on_connected(self, frame):
            print(json.dumps({"connected": frame.headers}), flush=True)

        def on_message(self, frame):
            print(json.dumps({"message": {"destination": frame.headers.get("destination"),
                                          "subscription": frame.headers.get("subscription"),
                                          "body": json.loads(frame.body)}}), flush=True)
            got.set()

        def on_receipt(self, frame):
            print(json.dumps({"receipt": frame.headers.get("receipt-id")}), flush=True)

        def on_error(self, frame):
            print(json.dumps({"error": frame.headers.get("message")}), flush=True)

        def on_heartbeat(self):
            heartbeats.append(time.time())

    conn = stomp.WSStompConnection([("127.0.0.1", port)], ws_path="/v1/ws",
                                   header={"Sec-WebSocket-Protocol": "v12.stomp"},
                                   heartbeats=(1000, 1000))
    conn.set_listener("", Listener())
    conn.connect(login="", passcode=token, wait=True)
    conn.subscribe(destination=f"/topic/{topic}", id="room", ack="auto", receipt="subscribed")
    time.sleep(0.3)
    conn.send(destination=f"/app/{topic}", body=json.dumps({"text": "from stomp.py"}),
              content_type="application/json", receipt="sent")
    if not got.wait(10):
        print(json.dumps({"error": "no message"}), flush=True)
        sys.exit(1)
    time.sleep(2.5)
    print(json.dumps({"heartbeats": len(heartbeats)}), flush=True)
    conn.disconnect(receipt="bye")


if __name__ == "__main__":
    main()
