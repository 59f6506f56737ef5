"""Scripted provider fakes on loopback: Slack, GitHub (REST and GraphQL), Linear, Anthropic.

The credential picks the script: a token `<prefix>-<scenario>-<n>` answers as `scenario` says.
  ok       the provider's success answer
  lost     the provider's lost-access answer (the resource of the session is gone)
  revoked  the provider's invalid-credential answer
  r429     429 (with Retry-After) on the first hit, then ok
  r5xx     500 (529 for Anthropic) on the first hit, then ok
Each provider has its own port, printed as one line `slack=PORT github=PORT linear=PORT
anthropic=PORT`. Every hit is counted per token: `GET /_hits/<token>` on any port answers the
count; `GET /_answer/<provider>/<scenario>` the bytes a scenario sends.
Answers are fixed bytes, so the suite can compare what an SDK got with what was sent.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HITS = {}
LOCK = threading.Lock()

SLACK_CHANNEL = "C0123ABCD"
GITHUB_REPO = "acme/widgets"
LINEAR_ISSUE = "8f1d5c2a-3b7e-4c19-9a0d-2e6f4b8c1a37"

JSON = "application/json; charset=utf-8"

ANSWERS = {
    "slack": {
        "ok": (200, {}, '{"ok":true,"channel":"C0123ABCD","ts":"1700000000.000100","message":{"type":"message","text":"standup"}}'),
        "lost": (200, {}, '{"ok":false,"error":"not_in_channel"}'),
        "revoked": (200, {}, '{"ok":false,"error":"invalid_auth"}'),
        "r429": (429, {"retry-after": "1"}, '{"ok":false,"error":"ratelimited"}'),
        "r5xx": (500, {}, '{"ok":false,"error":"internal_error"}'),
    },
    "github": {
        "ok": (200, {}, '{"id":1296269,"name":"widgets","full_name":"acme/widgets","private":true,"owner":{"login":"acme","id":1}}'),
        "lost": (404, {}, '{"message":"Not Found","documentation_url":"https://docs.github.com/rest/repos/repos#get-a-repository","status":"404"}'),
        "revoked": (401, {}, '{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}'),
        "r429": (429, {"retry-after": "1"}, '{"message":"API rate limit exceeded","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}'),
        "r5xx": (500, {}, '{"message":"Server Error"}'),
    },
    "github-graphql": {
        "ok": (200, {}, '{"data":{"repository":{"id":"R_kgDOAbCdEf"}}}'),
        "revoked": (401, {}, '{"message":"Bad credentials","documentation_url":"https://docs.github.com/graphql","status":"401"}'),
    },
    "linear": {
        "ok": (200, {}, '{"data":{"issue":{"id":"8f1d5c2a-3b7e-4c19-9a0d-2e6f4b8c1a37","identifier":"ENG-42","title":"Widgets"}}}'),
        "lost": (200, {}, '{"errors":[{"message":"Entity not found: Issue","path":["issue"],"locations":[{"line":1,"column":30}],"extensions":{"type":"invalid input","code":"INPUT_ERROR","statusCode":400,"userError":true,"userPresentableMessage":"Could not find referenced Issue."}}],"data":null}'),
        "revoked": (401, {}, '{"errors":[{"message":"Authentication required, not authenticated","extensions":{"type":"authentication error","code":"AUTHENTICATION_ERROR","statusCode":401,"userError":true,"userPresentableMessage":"You need to authenticate to access this operation.","meta":{},"http":{"status":401}}}]}'),
        "r429": (429, {"retry-after": "1"}, '{"errors":[{"message":"Rate limit exceeded","extensions":{"type":"ratelimited","code":"RATELIMITED"}}]}'),
        "r5xx": (500, {}, '{"errors":[{"message":"Internal server error","extensions":{"type":"internal error"}}]}'),
    },
    "anthropic": {
        "ok": (200, {"request-id": "req_ok"}, '{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Two issues are open."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":6}}'),
        "revoked": (401, {}, '{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CT4mV8xYzAbCdEfGhIjKl"}'),
        "r429": (429, {"retry-after": "1"}, '{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}'),
        "r5xx": (529, {}, '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
    },
}


SCENARIOS = ("ok", "lost", "revoked", "r429", "r5xx")


def token_of(headers, path):
    for name in ("x-api-key", "authorization"):
        value = headers.get(name)
        if value:
            return value.split()[-1]
    return ""


def provider_of(server, path):
    if server.provider == "github" and path.split("?")[0].endswith("/graphql"):
        return "github-graphql"
    return server.provider


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", JSON)
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/_hits/"):
            token = self.path[len("/_hits/"):]
            with LOCK:
                count = HITS.get(token, 0)
            return self.answer(200, {}, json.dumps({"hits": count}))
        if self.path.startswith("/_answer/"):
            # The bytes a scenario sends, for byte-exact comparison.
            _, _, provider, scenario = self.path.split("/", 3)
            return self.answer(200, {}, ANSWERS[provider][scenario][2])
        token = token_of(self.headers, self.path)
        with LOCK:
            HITS[token] = HITS.get(token, 0) + 1
            hit = HITS[token]
        scenario = next((p for p in token.split("-") if p in SCENARIOS), "ok")
        if scenario in ("r429", "r5xx") and hit > 1:
            scenario = "ok"
        script = ANSWERS.get(provider_of(self.server, self.path), {})
        if scenario not in script:
            return self.answer(404, {}, '{"message":"no such fake"}')
        self.answer(*script[scenario])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def main():
    # One port per provider, so upstream paths are the provider's own (`/repos/...`, `/graphql`).
    ports = []
    for provider in ("slack", "github", "linear", "anthropic"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.provider = provider
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(f"{provider}={server.server_address[1]}")
    print(" ".join(ports), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
