"""The official Python MCP server over Streamable HTTP, on a port given as the first argument."""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("files-py")


@server.tool()
def echo(text: str) -> str:
    """Echoes its text."""
    return f"echo: {text}"


if __name__ == "__main__":
    app = server.streamable_http_app(streamable_http_path="/mcp")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
