// Drives @stomp/stompjs, unchanged, against a Switchyard gateway.
// Usage: node stompjs-client.mjs <ws-url> <jwt> <room-topic>
// Prints one JSON line per observation and exits 0 when every step worked.
import { Client } from "@stomp/stompjs";
import WebSocket from "ws";

const [url, token, topic] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));
const fail = (why) => { out({ error: String(why) }); process.exit(1); };
setTimeout(() => fail("timed out"), 15000);

const client = new Client({
  webSocketFactory: () => new WebSocket(url, ["v12.stomp", "v11.stomp"]),
  connectHeaders: { Authorization: `Bearer ${token}` },
  heartbeatIncoming: 1000,
  heartbeatOutgoing: 1000,
  reconnectDelay: 0,
  onStompError: (f) => fail(`ERROR ${f.headers.message}`),
  onWebSocketError: (e) => fail(`socket ${e.message}`),
});

let heartbeats = 0;
let seen = { room: false, inbox: false };
// Once both arrived, stay long enough to see server heart-beats, then leave.
const maybeDone = () => {
  if (!seen.room || !seen.inbox) return;
  setTimeout(() => {
    out({ heartbeats });
    client.deactivate().then(() => process.exit(0));
  }, 2500);
};
client.onUnhandledFrame = (f) => out({ unhandled: f.command });
client.onConnect = (frame) => {
  out({ connected: frame.headers });
  client.subscribe(`/topic/${topic}`, (m) => {
    out({ message: { destination: m.headers.destination, subscription: m.headers.subscription,
      "message-id": m.headers["message-id"], "content-type": m.headers["content-type"], body: JSON.parse(m.body) } });
    seen.room = true;
    maybeDone();
  });
  const receipt = "sub-ready";
  client.watchForReceipt(receipt, () => {
    out({ receipt });
    client.publish({ destination: `/app/${topic}`, body: JSON.stringify({ text: "from stompjs" }),
      headers: { "content-type": "application/json" } });
  });
  client.subscribe("/user/queue/inbox", (m) => {
    out({ inbox: JSON.parse(m.body) });
    seen.inbox = true;
    maybeDone();
  }, { receipt });
};
// stompjs reports server heart-beats through its debug hook.
client.debug = (msg) => { if (msg.includes("<<< PONG")) heartbeats += 1; };
client.activate();
