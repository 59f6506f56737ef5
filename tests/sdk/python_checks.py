"""The Python SDKs through haltgate, each with its default retry settings.

Every check prints `ok NAME` or `FAIL NAME: why`; each halt prints a `halt` line (SDK, version,
error type, message) for the table in the README. Also checks that bodies pass byte-exact.
"""

import asyncio
import importlib.metadata
import itertools
import json
import os
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import anthropic
import github
import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

HG = os.environ["HG"]
CONTROL = os.environ["CONTROL"]
FAKE = os.environ["FAKE"]
MCP_TS = os.environ["MCP_TS"]
MCP_PY = os.environ["MCP_PY"]
MCP_TS_DIRECT = os.environ["MCP_TS_DIRECT"]
CHANNEL = "C0123ABCD"
SERIAL = itertools.count(1)
HALTS = []


def unique(what):
    return f"{what}-py{os.getpid()}-{next(SERIAL)}"


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def set_scope(sid, scope):
    assert http("PUT", f"{CONTROL}/v1/sessions/{sid}", {"scope": scope})[0] == 200


def session_status(sid):
    status, _, body = http("GET", f"{CONTROL}/v1/sessions/{sid}")
    return "unknown" if status == 404 else json.loads(body)["status"]


def hits(base, token):
    return json.loads(http("GET", f"{base}/_hits/{token}")[2])["hits"]


def halted(sdk, package, error, message):
    HALTS.append({"sdk": sdk, "version": importlib.metadata.version(package),
                  "type": type(error).__name__, "message": message})


def raises(call):
    try:
        call()
    except Exception as error:  # the SDK's own error type is what is checked
        return error
    raise AssertionError("the call succeeded")


# --- recipes (the README shows these) -------------------------------------------------------
def slack(token, sid):
    return WebClient(token=token, base_url=f"{HG}/slack/api/",
                     headers={"x-haltgate-session": sid, "x-haltgate-epoch": "0"})


class SessionToken(github.Auth.Token):
    """A GitHub token that also names the haltgate session on every request."""

    def __init__(self, token, session):
        super().__init__(token)
        self.session = session

    def authentication(self, headers):
        super().authentication(headers)
        headers["x-haltgate-session"] = self.session


def pygithub(token, sid):
    return github.Github(auth=SessionToken(token, sid), base_url=f"{HG}/github")


def claude(key, sid):
    return anthropic.Anthropic(api_key=key, base_url=f"{HG}/anthropic",
                               default_headers={"x-haltgate-session": sid})


async def mcp_call(url, sid, token, text="hi"):
    headers = {"x-haltgate-session": sid}
    if token:
        headers["authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(headers=headers) as http_client:
        async with streamable_http_client(url, http_client=http_client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("echo", {"text": text})
                return result.content[0].text


async def mcp_raises(url, sid, token):
    try:
        await asyncio.wait_for(mcp_call(url, sid, token), 20)
    except BaseException as error:  # noqa: BLE001 - anyio wraps errors in groups
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        return error
    raise AssertionError("the call succeeded")


# --- checks ---------------------------------------------------------------------------------
def byte_exact():
    for provider, path in [("slack", "/slack/api/chat.postMessage"), ("github", "/github/repos/acme/widgets"),
                           ("linear", "/linear/graphql"), ("anthropic", "/anthropic/v1/messages")]:
        token = unique(f"tok-REDACTED-ok")
        _, _, sent = http("GET", f"{FAKE}/_answer/{provider}/ok")
        status, _, got = http("POST", HG + path, {"x": 1}, {"authorization": f"Bearer {token}"})
        assert (status, got) == (200, sent), (provider, got)


def slack_pass():
    result = slack(unique("xoxb-REDACTED-ok"), unique("s")).chat_postMessage(channel=CHANNEL, text="standup")
    assert result["ts"] == "1700000000.000100"


def slack_lost():
    sid = unique("s")
    set_scope(sid, {"slack_channel": CHANNEL})
    token = unique("xoxb-REDACTED-lost")
    error = raises(lambda: slack(token, sid).chat_postMessage(channel=CHANNEL, text="standup"))
    assert isinstance(error, SlackApiError), repr(error)
    assert error.response["error"] == "haltgate_lost_access"
    assert "Do not retry" in error.response["haltgate"]["message"]
    assert "Do not retry" in str(error)
    assert hits(FAKE, token) == 1
    halted("slack_sdk", "slack_sdk", error, str(error).splitlines()[0] + " … " + error.response["haltgate"]["message"])
    later = unique("xoxb-REDACTED-ok")
    raises(lambda: slack(later, sid).chat_postMessage(channel=CHANNEL, text="x"))
    assert hits(FAKE, later) == 0


def slack_revoked():
    token = unique("xoxb-REDACTED-revoked")
    error = raises(lambda: slack(token, unique("s")).auth_test())
    assert error.response["error"] == "haltgate_credential_invalid"
    assert hits(FAKE, token) == 1


def slack_transient():
    # slack_sdk's default handlers retry connection errors only: a 429 or 500 reaches the
    # agent as Slack sent it, and the next call goes through.
    for scenario in ("r429", "r5xx"):
        token, sid = unique(f"xoxb-REDACTED-{scenario}"), unique("s")
        error = raises(lambda: slack(token, sid).chat_postMessage(channel=CHANNEL, text="x"))
        assert error.response.status_code in (429, 500), error
        assert slack(token, sid).chat_postMessage(channel=CHANNEL, text="x")["ok"] is True
        assert hits(FAKE, token) == 2


def pygithub_pass():
    assert pygithub(unique("ghs_REDACTED-ok"), unique("s")).get_repo("acme/widgets").full_name == "acme/widgets"


def pygithub_lost():
    sid = unique("s")
    set_scope(sid, {"github_repo": "acme/widgets"})
    token = unique("ghs_REDACTED-lost")
    error = raises(lambda: pygithub(token, sid).get_repo("acme/widgets"))
    assert isinstance(error, github.GithubException) and error.status == 410, repr(error)
    assert "Do not retry" in error.data["message"]
    assert hits(FAKE, token) == 1
    halted("PyGithub", "PyGithub", error, str(error))
    later = unique("ghs_REDACTED-ok")
    raises(lambda: pygithub(later, sid).get_repo("acme/widgets"))
    assert hits(FAKE, later) == 0


def pygithub_revoked():
    token = unique("ghs_REDACTED-revoked")
    error = raises(lambda: pygithub(token, unique("s")).get_repo("acme/widgets"))
    assert error.status == 410 and error.data["haltgate"]["class"] == "credential_invalid", repr(error)
    assert hits(FAKE, token) == 1


def pygithub_transient():
    token = unique("ghs_REDACTED-r5xx")
    assert pygithub(token, unique("s")).get_repo("acme/widgets").name == "widgets"
    assert hits(FAKE, token) == 2


def anthropic_pass():
    message = claude(unique("sk-ant-REDACTED-ok"), unique("s")).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Open issues?"}])
    assert message.content[0].text == "Two issues are open."


def anthropic_revoked():
    sid, key = unique("s"), unique("sk-ant-REDACTED-revoked")
    request = dict(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "x"}])
    error = raises(lambda: claude(key, sid).messages.create(**request))
    assert isinstance(error, anthropic.AuthenticationError), repr(error)
    assert "Do not retry" in str(error)
    assert hits(FAKE, key) == 1
    halted("anthropic (Python)", "anthropic", error, str(error))
    later = unique("sk-ant-REDACTED-ok")
    raises(lambda: claude(later, sid).messages.create(**request))
    assert hits(FAKE, later) == 0


def anthropic_transient():
    for scenario in ("r429", "r5xx"):
        key = unique(f"sk-ant-REDACTED-{scenario}")
        message = claude(key, unique("s")).messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "x"}])
        assert message.id == "msg_01"
        assert hits(FAKE, key) == 2, scenario


def mcp_pass():
    for url in (MCP_TS, MCP_PY):
        assert asyncio.run(mcp_call(url, unique("s"), unique("mcp-ok"))) == "echo: hi"


def mcp_revoked():
    sid, token = unique("s"), unique("mcp-revoked")
    error = asyncio.run(mcp_raises(MCP_TS, sid, token))
    assert isinstance(error, MCPError) and error.code == -32010, repr(error)
    assert "Do not retry" in error.message
    assert hits(MCP_TS_DIRECT, token) == 1
    halted("mcp (Python)", "mcp", error, f"{error.code} {error.message}")
    later = unique("mcp-ok")
    asyncio.run(mcp_raises(MCP_TS, sid, later))
    assert hits(MCP_TS_DIRECT, later) == 0


def mcp_stale():
    sid, token = unique("s"), unique("mcp-ok")

    async def scenario():
        headers = {"x-haltgate-session": sid, "authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers) as http_client:
            async with streamable_http_client(MCP_TS, http_client=http_client) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    http("POST", f"{MCP_TS_DIRECT}/admin/forget/{token}")
                    try:
                        await asyncio.wait_for(session.call_tool("echo", {"text": "x"}), 10)
                        raise AssertionError("the forgotten session answered")
                    except MCPError:
                        pass
        assert session_status(sid) != "closed"
        assert await mcp_call(MCP_TS, sid, token, "again") == "echo: again"

    asyncio.run(scenario())


def mcp_unauthenticated():
    sid = unique("s")
    asyncio.run(mcp_raises(MCP_TS, sid, None))
    assert session_status(sid) != "closed", "a request without a credential closed the session"


CHECKS = {
    "byte-exact pass-through": byte_exact,
    "slack_sdk pass": slack_pass,
    "slack_sdk lost access halts on the first attempt, later calls stay away": slack_lost,
    "slack_sdk credential loss halts on the first attempt": slack_revoked,
    "slack_sdk 429 and 5xx pass untouched": slack_transient,
    "pygithub pass": pygithub_pass,
    "pygithub lost access halts on the first attempt, later calls stay away": pygithub_lost,
    "pygithub credential loss halts on the first attempt": pygithub_revoked,
    "pygithub 5xx passes and its retry succeeds": pygithub_transient,
    "anthropic-python pass": anthropic_pass,
    "anthropic-python credential loss halts on the first attempt, later calls stay away": anthropic_revoked,
    "anthropic-python 429 and 529 pass and its retry succeeds": anthropic_transient,
    "mcp-python-client pass (TypeScript and Python servers)": mcp_pass,
    "mcp-python-client credential loss halts on the first attempt, later calls stay away": mcp_revoked,
    "mcp-python-client stale session resets and the next initialize works": mcp_stale,
    "mcp-python-client first unauthenticated request closes nothing": mcp_unauthenticated,
}


def run(item):
    name, check = item
    started = time.monotonic()
    try:
        check()
        return f"ok {name} ({int((time.monotonic() - started) * 1000)} ms)"
    except BaseException:  # noqa: BLE001 - report every failure, keep going
        return f"FAIL {name}: {traceback.format_exc()}"


def main():
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        results = list(pool.map(run, CHECKS.items()))
    for line in results:
        print(line)
    for halt in HALTS:
        print("halt " + json.dumps(halt))
    return 1 if any(line.startswith("FAIL") for line in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
