"""The node agent: store and kernel joined by one asyncio loop, plus its HTTP API."""
