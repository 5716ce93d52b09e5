// A client typed by `switchboard schema --format typescript` (generated beside this file as
// switchboard-events.ts by schema.test.mjs), using every event of the built-in plugins.
// It must compile under `tsc --strict`; misspelt.ts, the same with a field misspelt, must not.

import { io, Socket } from "socket.io-client";
import type {
  ClientAcks,
  ClientToServerEvents,
  EmitBody,
  MessageReceived,
  ServerToClientEvents,
} from "./switchboard-events";

const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io("http://127.0.0.1:3000/messages", {
  auth: { token: "a.b.c" },
});

// Client → server, with and without acks.
socket.emit("conversation:join", { conversationId: "42" });
socket.emit("conversation:join", { conversationId: "42" }, (reply) => {
  if (reply.success) console.log(reply.conversationId);
  else console.log(reply.error);
});
socket.emit("conversation:leave", { conversationId: "42" });
socket.emit("typing:start", { conversationId: "42" });
socket.emit("typing:stop", { conversationId: "42" }, (reply) => console.log(reply.success));
socket.emit("session:join", { sessionId: "s1" });
socket.emit("session:leave", { sessionId: "s1" }, (reply) => {
  if (reply.success) console.log(reply.sessionId);
});
socket.emit("auth:refresh", { token: "d.e.f" }, (reply) => {
  if ("expiresAt" in reply) console.log(reply.expiresAt);
});

async function joinWithAck(): Promise<string | null> {
  const ack: ClientAcks["conversation:join"] = await socket
    .timeout(5000)
    .emitWithAck("conversation:join", { conversationId: "42" });
  return ack.success ? ack.conversationId : ack.error;
}

// Server → client: every event.
function show(m: MessageReceived): string {
  return `${m.senderId}: ${JSON.stringify(m.content)} (${m.status}) at ${m.timestamp}`;
}
socket.on("message:received", (m) => console.log(show(m), m.type, m.messageId));
socket.on("message:status", ({ conversationId, messageId, status }) => {
  const tick: "sent" | "delivered" | "read" = status;
  console.log(conversationId, messageId, tick);
});
socket.on("typing:start", ({ conversationId, userId, isTyping }) => console.log(conversationId, userId, isTyping));
socket.on("typing:stop", (t) => console.log(t.isTyping));
socket.on("conversation:joined", (r) => console.log(r.conversationId, r.success));
socket.on("conversation:left", (r) => console.log(r.conversationId));
socket.on("session:joined", (r) => console.log(r.sessionId));
socket.on("session:left", (r) => console.log(r.sessionId));
socket.on("session:message-sent", (m) => console.log(m.sessionId, m.senderName ?? "", m.isFromBot ?? false, m.senderPhone));
socket.on("session:node-executed", (n) => console.log(n.sessionId, n.nodeId, n.nodeLabel));
socket.on("session:status-changed", (s) => {
  const status: "running" | "waiting_input" | "completed" | "expired" | "stopped" = s.newStatus;
  console.log(status, s.currentNodeId, s.currentNodeLabel, s.updatedAt);
});
socket.on("session:completed", (c) => console.log(c.completedAt, c.completionReason, c.totalNodes + c.totalMessages));
socket.on("user:online", ({ userId }) => console.log(userId));
socket.on("user:offline", ({ userId }) => console.log(userId));
socket.on("auth:expiring", ({ expiresAt }) => console.log(expiresAt ?? "never"));
socket.on("auth:refreshed", ({ expiresAt }) => console.log(expiresAt));
socket.on("room:joined", ({ room }) => console.log(room));
socket.on("room:left", ({ room }) => console.log(room));
socket.on("error", ({ message, timestamp }) => console.log(message, timestamp));

// A TypeScript backend's emit bodies.
const bodies: EmitBody[] = [
  {
    event: "message:received",
    data: {
      conversationId: "42",
      messageId: "m1",
      senderId: "u1",
      type: "text",
      content: { body: "hi" },
      status: "sent",
      timestamp: "2026-12-06T10:00:00Z",
    },
  },
  { event: "message:status", data: { conversationId: "42", messageId: "m1", status: "read" } },
  { event: "message:status", data: { conversationId: "42", messageId: "m1", status: "read" }, user: "u1" },
  { event: "typing:start", data: { conversationId: "42", userId: "bot", isTyping: true } },
  { event: "typing:stop", data: { conversationId: "42", userId: "bot", isTyping: false } },
  {
    event: "session:message-sent",
    data: {
      sessionId: "s1",
      messageId: "m2",
      senderId: "bot",
      isFromBot: true,
      type: "text",
      content: "Welcome",
      status: "sent",
      timestamp: "2026-12-06T10:00:00Z",
    },
  },
  { event: "session:node-executed", data: { sessionId: "s1", nodeId: "n1", nodeLabel: "Greeting" } },
  { event: "session:status-changed", data: { sessionId: "s1", newStatus: "waiting_input", updatedAt: "2026-12-06T10:00:00Z" } },
  {
    event: "session:completed",
    data: { sessionId: "s1", completedAt: "2026-12-06T10:05:00Z", totalNodes: 4, totalMessages: 9 },
  },
  { event: "billing:updated", data: { plan: "pro" }, room: "account:7" },
];

export { joinWithAck, bodies };
