// The Node SDKs through haltgate, each with its default retry settings. Every check prints
// `ok NAME` or `FAIL NAME: why`; each halt prints a `halt` line (SDK, version, error type,
// message) for the table in the README.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { WebClient } from "@slack/web-api";
import { Octokit as RestOctokit } from "@octokit/rest";
import { retry } from "@octokit/plugin-retry";
import { throttling } from "@octokit/plugin-throttling";
import Anthropic from "@anthropic-ai/sdk";
import { LinearClient } from "@linear/sdk";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const { HG, CONTROL, FAKE, MCP_TS_DIRECT } = process.env;
const version = (name) =>
  JSON.parse(readFileSync(new URL(`../node_modules/${name}/package.json`, import.meta.url))).version;
let serial = 0;
const unique = (what) => `${what}-${process.pid}-${++serial}`;

// --- the platform's side: session scope, session state, provider hits -----------------------
async function setScope(sid, scope) {
  const response = await fetch(`${CONTROL}/v1/sessions/${sid}`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ scope }),
  });
  assert.equal(response.status, 200);
}
async function sessionStatus(sid) {
  const response = await fetch(`${CONTROL}/v1/sessions/${sid}`);
  return response.status === 404 ? "unknown" : (await response.json()).status;
}
async function hits(base, token) {
  return (await (await fetch(`${base}/_hits/${token}`)).json()).hits;
}

const halts = [];
function halted(sdk, error) {
  halts.push({ sdk, version: version(sdk), type: error.constructor.name, message: error.message });
}
async function rejects(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("the call succeeded");
}

// --- recipes (the README shows these) ---------------------------------------------------------
const slack = (token, sid) =>
  new WebClient(token, {
    slackApiUrl: `${HG}/slack/api/`,
    headers: { "x-haltgate-session": sid, "x-haltgate-epoch": "0" },
  });

const Octokit = RestOctokit.plugin(retry, throttling);
function octokit(token, sid) {
  const client = new Octokit({
    auth: token,
    baseUrl: `${HG}/github`,
    throttle: {
      onRateLimit: (_after, _options, _octokit, retryCount) => retryCount < 1,
      onSecondaryRateLimit: () => false,
    },
  });
  // `@octokit/core` drops a `headers` constructor option; a request hook adds them.
  client.hook.before("request", (options) => {
    options.headers["x-haltgate-session"] = sid;
  });
  return client;
}

const anthropic = (apiKey, sid) =>
  new Anthropic({ apiKey, baseURL: `${HG}/anthropic`, defaultHeaders: { "x-haltgate-session": sid } });

const linear = (apiKey, sid) =>
  new LinearClient({ apiKey, apiUrl: `${HG}/linear/graphql`, headers: { "x-haltgate-session": sid } });

async function mcp(url, sid, token) {
  const headers = { "x-haltgate-session": sid };
  if (token) headers.authorization = `Bearer ${token}`;
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  const client = new Client({ name: "agent", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

// --- checks -----------------------------------------------------------------------------------
const CHANNEL = "C0123ABCD";
const ISSUE = "8f1d5c2a-3b7e-4c19-9a0d-2e6f4b8c1a37";
const ISSUE_QUERY = "query issue($id: String!) { issue(id: $id) { id identifier title } }";
const checks = {
  async "slack-node pass"() {
    const result = await slack(unique("xoxb-REDACTED-ok"), unique("s")).chat.postMessage({ channel: CHANNEL, text: "standup" });
    assert.equal(result.ts, "1700000000.000100");
  },
  async "slack-node lost access halts on the first attempt, later calls stay away"() {
    const sid = unique("s");
    await setScope(sid, { slack_channel: CHANNEL });
    const token = unique("xoxb-REDACTED-lost");
    const error = await rejects(slack(token, sid).chat.postMessage({ channel: CHANNEL, text: "standup" }));
    assert.equal(error.code, "slack_webapi_platform_error");
    assert.equal(error.data.error, "haltgate_lost_access");
    assert.match(error.data.haltgate.message, /Do not retry/);
    assert.match(error.data.response_metadata.messages[0], /^\[ERROR\] Access to this resource was lost/);
    assert.equal(error.data.haltgate.session, sid);
    assert.equal(await hits(FAKE, token), 1);
    halted("@slack/web-api", error);
    const later = unique("xoxb-REDACTED-ok");
    const again = await rejects(slack(later, sid).chat.postMessage({ channel: CHANNEL, text: "x" }));
    assert.equal(again.data.error, "haltgate_lost_access");
    assert.equal(await hits(FAKE, later), 0);
  },
  async "slack-node credential loss halts on the first attempt"() {
    const token = unique("xoxb-REDACTED-revoked");
    const error = await rejects(slack(token, unique("s")).auth.test());
    assert.equal(error.data.error, "haltgate_credential_invalid");
    assert.equal(await hits(FAKE, token), 1);
  },
  async "slack-node 429 and 5xx pass and its retry succeeds"() {
    for (const scenario of ["r429", "r5xx"]) {
      const token = unique(`xoxb-REDACTED-${scenario}`);
      const result = await slack(token, unique("s")).chat.postMessage({ channel: CHANNEL, text: "x" });
      assert.equal(result.ok, true);
      assert.equal(await hits(FAKE, token), 2, scenario);
    }
  },
  async "octokit pass"() {
    const { data } = await octokit(unique("ghs_REDACTED-ok"), unique("s")).rest.repos.get({ owner: "acme", repo: "widgets" });
    assert.equal(data.full_name, "acme/widgets");
  },
  async "octokit lost access halts on the first attempt, later calls stay away"() {
    const sid = unique("s");
    await setScope(sid, { github_repo: "acme/widgets" });
    const token = unique("ghs_REDACTED-lost");
    const error = await rejects(octokit(token, sid).rest.repos.get({ owner: "acme", repo: "widgets" }));
    assert.equal(error.status, 410);
    assert.match(error.message, /Do not retry/);
    assert.equal(error.response.data.haltgate.class, "lost_access");
    assert.equal(await hits(FAKE, token), 1);
    halted("@octokit/rest", error);
    const later = unique("ghs_REDACTED-ok");
    await rejects(octokit(later, sid).rest.repos.get({ owner: "acme", repo: "widgets" }));
    assert.equal(await hits(FAKE, later), 0);
  },
  async "octokit graphql credential loss halts on the first attempt"() {
    const token = unique("ghs_REDACTED-revoked");
    const error = await rejects(octokit(token, unique("s")).graphql("query { viewer { login } }"));
    assert.match(error.message, /Do not retry/);
    assert.equal(error.errors[0].extensions.haltgate.class, "credential_invalid");
    assert.equal(await hits(FAKE, token), 1);
    halted("@octokit/rest", error);
  },
  async "octokit 429 and 5xx pass and its retry succeeds"() {
    for (const scenario of ["r429", "r5xx"]) {
      const token = unique(`ghs_REDACTED-${scenario}`);
      const { data } = await octokit(token, unique("s")).rest.repos.get({ owner: "acme", repo: "widgets" });
      assert.equal(data.name, "widgets");
      assert.equal(await hits(FAKE, token), 2, scenario);
    }
  },
  async "anthropic-node pass"() {
    const message = await anthropic(unique("sk-ant-REDACTED-ok"), unique("s")).messages.create({
      model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "Open issues?" }],
    });
    assert.equal(message.content[0].text, "Two issues are open.");
  },
  async "anthropic-node credential loss halts on the first attempt, later calls stay away"() {
    const sid = unique("s");
    const key = unique("sk-ant-REDACTED-revoked");
    const request = { model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "x" }] };
    const error = await rejects(anthropic(key, sid).messages.create(request));
    assert.equal(error.status, 401);
    assert.equal(error.error.error.type, "authentication_error");
    assert.match(error.message, /Do not retry/);
    assert.equal(await hits(FAKE, key), 1);
    halted("@anthropic-ai/sdk", error);
    const later = unique("sk-ant-REDACTED-ok");
    await rejects(anthropic(later, sid).messages.create(request));
    assert.equal(await hits(FAKE, later), 0);
  },
  async "anthropic-node 429 and 529 pass and its retry succeeds"() {
    for (const scenario of ["r429", "r5xx"]) {
      const key = unique(`sk-ant-REDACTED-${scenario}`);
      const message = await anthropic(key, unique("s")).messages.create({
        model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "x" }],
      });
      assert.equal(message.id, "msg_01");
      assert.equal(await hits(FAKE, key), 2, scenario);
    }
  },
  async "linear pass"() {
    const { data } = await linear(unique("lin_api_REDACTED-ok"), unique("s")).client.rawRequest(ISSUE_QUERY, { id: ISSUE });
    assert.equal(data.issue.identifier, "ENG-42");
  },
  async "linear lost access halts on the first attempt, later calls stay away"() {
    const sid = unique("s");
    await setScope(sid, { linear_issue: ISSUE });
    const key = unique("lin_api_REDACTED-lost");
    const error = await rejects(linear(key, sid).issue(ISSUE));
    assert.equal(error.constructor.name, "ForbiddenLinearError");
    assert.match(error.message, /Do not retry/);
    assert.equal(await hits(FAKE, key), 1);
    halted("@linear/sdk", error);
    const later = unique("lin_api_REDACTED-ok");
    await rejects(linear(later, sid).issue(ISSUE));
    assert.equal(await hits(FAKE, later), 0);
  },
  async "linear credential loss halts on the first attempt"() {
    const key = unique("lin_api_REDACTED-revoked");
    const error = await rejects(linear(key, unique("s")).issue(ISSUE));
    assert.equal(error.constructor.name, "AuthenticationLinearError");
    assert.match(error.message, /Do not retry/);
    assert.equal(await hits(FAKE, key), 1);
    halted("@linear/sdk", error);
  },
  async "linear 5xx passes untouched"() {
    // @linear/sdk has no retry of its own: the 500 reaches the agent as the provider sent it.
    const key = unique("lin_api_REDACTED-r5xx");
    const sid = unique("s");
    const error = await rejects(linear(key, sid).client.rawRequest(ISSUE_QUERY, { id: ISSUE }));
    assert.equal(error.constructor.name, "InternalLinearError");
    const { data } = await linear(key, sid).client.rawRequest(ISSUE_QUERY, { id: ISSUE });
    assert.equal(data.issue.identifier, "ENG-42");
    assert.equal(await hits(FAKE, key), 2);
  },
  async "mcp-ts-client pass (TypeScript and Python servers)"() {
    for (const url of [process.env.MCP_TS, process.env.MCP_PY]) {
      const client = await mcp(url, unique("s"), unique("mcp-ok"));
      const result = await client.callTool({ name: "echo", arguments: { text: "hi" } });
      assert.equal(result.content[0].text, "echo: hi");
      await client.close();
    }
  },
  async "mcp-ts-client credential loss halts on the first attempt, later calls stay away"() {
    const sid = unique("s");
    const token = unique("mcp-revoked");
    const error = await rejects(mcp(process.env.MCP_TS, sid, token));
    assert.equal(error.code, -32010);
    assert.match(error.message, /Do not retry/);
    assert.equal(await hits(MCP_TS_DIRECT, token), 1);
    halted("@modelcontextprotocol/sdk", error);
    const later = unique("mcp-ok");
    const again = await rejects(mcp(process.env.MCP_TS, sid, later));
    assert.equal(again.code, -32010);
    assert.equal(await hits(MCP_TS_DIRECT, later), 0);
  },
  async "mcp-ts-client stale session resets and the next initialize works"() {
    const sid = unique("s");
    const token = unique("mcp-ok");
    const client = await mcp(process.env.MCP_TS, sid, token);
    await fetch(`${MCP_TS_DIRECT}/admin/forget/${token}`, { method: "POST" });
    await rejects(client.callTool({ name: "echo", arguments: { text: "hi" } }));
    assert.notEqual(await sessionStatus(sid), "closed");
    const fresh = await mcp(process.env.MCP_TS, sid, token);
    const result = await fresh.callTool({ name: "echo", arguments: { text: "again" } });
    assert.equal(result.content[0].text, "echo: again");
    await fresh.close();
  },
  async "mcp-ts-client first unauthenticated request closes nothing"() {
    const sid = unique("s");
    await rejects(mcp(process.env.MCP_TS, sid, null));
    assert.notEqual(await sessionStatus(sid), "closed", "a request without a credential closed the session");
    const client = await mcp(process.env.MCP_TS, sid, unique("mcp-ok"));
    await client.callTool({ name: "echo", arguments: { text: "hi" } });
    await client.close();
  },
};

const selected = Object.entries(checks);
const results = await Promise.all(
  selected.map(async ([name, check]) => {
    const started = Date.now();
    try {
      let timer;
      const limit = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("no answer within 90 s")), 90_000);
      });
      await Promise.race([check(), limit]).finally(() => clearTimeout(timer));
      return `ok ${name} (${Date.now() - started} ms)`;
    } catch (error) {
      return `FAIL ${name}: ${error?.stack ?? error}`;
    }
  }),
);
for (const line of results) console.log(line);
for (const halt of halts) console.log(`halt ${JSON.stringify(halt)}`);
process.exit(results.some((line) => line.startsWith("FAIL")) ? 1 : 0);
