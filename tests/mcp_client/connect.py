#!/usr/bin/env python3
"""crmkit's connector driven by the official MCP Python SDK.

Usage: connect.py BASE_URL EMAIL
The SDK's OAuth client does discovery, dynamic registration, PKCE and the
token exchange; this script plays the person at the sign-in page (submitting
the forms) and asks its parent for the emailed code: it prints `NEED_CODE`
and reads the code from stdin. Then it lists the tools, calls `request`,
revokes its token through DELETE /tokens/{id} and checks /mcp answers 401.
Prints `OK` and exits 0 when every step held.
"""

import asyncio
import re
import sys
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

BASE, EMAIL = sys.argv[1], sys.argv[2]
REDIRECT = "http://127.0.0.1:33418/callback"


class MemoryStorage(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


result = {}


def field(page, name):
    m = re.search(r'name="%s" value="([^"]+)"' % name, page)
    assert m, "no %s field in the page" % name
    return m.group(1)


async def sign_in(authorization_url):
    async with httpx2.AsyncClient(follow_redirects=False) as web:
        page = (await web.get(authorization_url)).text
        flow, csrf = field(page, "flow"), field(page, "csrf")
        form = {"flow": flow, "csrf": csrf}
        page = (await web.post(BASE + "/oauth/authorize", data={**form, "step": "email", "email": EMAIL})).text
        assert "Enter your code" in page, page
        print("NEED_CODE", flush=True)
        code = sys.stdin.readline().strip()
        page = (await web.post(BASE + "/oauth/authorize", data={**form, "step": "code", "code": code})).text
        assert "Allow access?" in page, page
        workspace = re.search(r'<option value="([^"]+)"', page).group(1)
        answer = await web.post(
            BASE + "/oauth/authorize",
            data={**form, "step": "consent", "workspace": workspace, "decision": "allow"},
        )
        assert answer.status_code == 303, answer.status_code
        query = parse_qs(urlparse(answer.headers["location"]).query)
        result["code"] = query["code"][0]
        result["state"] = query.get("state", [None])[0]
        result["iss"] = query.get("iss", [None])[0]


async def callback():
    return AuthorizationCodeResult(code=result["code"], state=result["state"], iss=result["iss"])


def text_of(call_result):
    return "".join(getattr(c, "text", "") for c in call_result.content)


async def main():
    storage = MemoryStorage()
    oauth = OAuthClientProvider(
        server_url=BASE + "/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="Python SDK check",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=sign_in,
        callback_handler=callback,
    )
    async with create_mcp_http_client(auth=oauth) as http:
        async with streamable_http_client(BASE + "/mcp", http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                names = [t.name for t in tools.tools]
                assert names == ["request"], names
                who = await session.call_tool("request", {"method": "GET", "path": "/whoami"})
                assert "email=" + EMAIL in text_of(who), text_of(who)
                made = await session.call_tool(
                    "request", {"method": "POST", "path": "/contacts", "body": {"name": "Made by the SDK"}}
                )
                assert "# created" in text_of(made), text_of(made)
                listed = await session.call_tool("request", {"method": "GET", "path": "/contacts?search=sdk"})
                assert "Made by the SDK" in text_of(listed), text_of(listed)
                missing = await session.call_tool("request", {"method": "GET", "path": "/contacts/c_000000000000"})
                assert missing.is_error, missing

    # Revoke the connector's token like a person would, then /mcp refuses it.
    token = storage.tokens.access_token
    headers = {"Authorization": "Bearer " + token}
    async with httpx2.AsyncClient() as api:
        listing = (await api.get(BASE + "/tokens?format=json", headers=headers)).json()
        current = [t for t in listing["data"] if t["current"]][0]
        assert current["name"] == "Python SDK check", current
        gone = await api.delete(BASE + "/tokens/" + current["id"], headers=headers)
        assert gone.status_code == 200, gone.text
        after = await api.post(
            BASE + "/mcp",
            headers={**headers, "Accept": "application/json, text/event-stream", "Content-Type": "application/json"},
            content='{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        )
        assert after.status_code == 401, after.status_code
        assert "resource_metadata=" in after.headers.get("www-authenticate", "")
    print("OK", flush=True)


asyncio.run(main())
