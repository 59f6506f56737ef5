// The official TypeScript MCP server over Streamable HTTP, behind the SDK's own bearer-token
// middleware. Tokens `mcp-ok-N` are valid, `mcp-revoked-N` are rejected as `invalid_token`.
// `POST /admin/forget/TOKEN` drops the sessions opened with TOKEN, as a restarted server would.
import express from "express";
import { randomUUID } from "node:crypto";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { requireBearerAuth } from "@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js";
import { InvalidTokenError } from "@modelcontextprotocol/sdk/server/auth/errors.js";
import { z } from "zod";

const hits = new Map();
const transports = new Map();
const sessionsOf = new Map();

function newServer() {
  const server = new McpServer({ name: "files-ts", version: "1.0.0" });
  server.registerTool(
    "echo",
    { description: "Echoes its text", inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: "text", text: `echo: ${text}` }] }),
  );
  return server;
}

const verifier = {
  async verifyAccessToken(token) {
    if (!token.startsWith("mcp-ok-")) throw new InvalidTokenError("Token has been revoked");
    return { token, clientId: "agent", scopes: [], expiresAt: Math.floor(Date.now() / 1000) + 3600 };
  },
};

const app = express();
app.use(express.json());
app.get("/_hits/:token", (req, res) => res.json({ hits: hits.get(req.params.token) ?? 0 }));
app.post("/admin/forget/:token", (req, res) => {
  const sessions = sessionsOf.get(req.params.token) ?? [];
  for (const sid of sessions) transports.delete(sid);
  res.json({ forgotten: sessions.length });
});
app.use("/mcp", (req, _res, next) => {
  const token = (req.headers.authorization ?? "").split(" ").pop() || "-";
  hits.set(token, (hits.get(token) ?? 0) + 1);
  next();
});
app.all("/mcp", requireBearerAuth({ verifier }), async (req, res) => {
  const id = req.headers["mcp-session-id"];
  let transport = id ? transports.get(id) : undefined;
  if (!transport) {
    if (id) {
      res.status(404).json({ jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (sid) => {
        transports.set(sid, transport);
        const token = req.auth.token;
        sessionsOf.set(token, [...(sessionsOf.get(token) ?? []), sid]);
      },
    });
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});

const listener = app.listen(0, "127.0.0.1", () => console.log(listener.address().port));
