#!/usr/bin/env python3
"""spec/e2e/tcp_peers.py -- TCP peers for spec/e2e/tcp_spec.lua, on loopback.

  tcp_peers.py MODE PORTFILE [CERT KEY]

Listens on 127.0.0.1 port 0, writes the port to PORTFILE (then renames it
into place, so a reader never sees half a number) and serves until killed:
  policy  a Postfix policy delegation service: reads name=value lines up to
          a blank line and answers "action=..." by the recipient's local
          part: reject* -> "REJECT Not here", defer* -> "DEFER_IF_PERMIT
          Try later", code* -> "554 5.7.1 Go away", hold* -> never answers,
          anything else -> DUNNO; each request is appended to PORTFILE.log
  silent    accepts and never says anything (reads and discards)
  full      listens with a backlog of 0 and never accepts: once the queue
            is full, connects hang (the kernel drops their SYNs)
  flood     sends 200000 octets of "x", no line end, and closes
  starttls  a line echo over TLS with CERT and KEY: "220 ready" in
            plaintext, then "STARTTLS" -> "220 go" (plus a line of plaintext
            that must never be read as TLS) and the handshake; after it
            every line comes back prefixed with "echo "
  tls       the same echo, TLS from the start
  echo      the same echo, in plaintext
"""
import asyncio
import os
import socket
import ssl
import sys
import time

mode, portfile = sys.argv[1], sys.argv[2]
log = open(portfile + ".log", "a", buffering=1)


async def policy(reader, writer):
    try:
        while True:
            attrs = {}
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n").decode()
                if line == "":
                    break
                k, _, v = line.partition("=")
                attrs[k] = v
            log.write(repr(attrs) + "\n")
            local = attrs.get("recipient", "").split("@")[0]
            if local.startswith("reject"):
                action = "REJECT Not here"
            elif local.startswith("defer"):
                action = "DEFER_IF_PERMIT Try later"
            elif local.startswith("code"):
                action = "554 5.7.1 Go away"
            elif local.startswith("hold"):
                await asyncio.sleep(3600)
                return
            else:
                action = "DUNNO"
            writer.write(("action=%s\n\n" % action).encode())
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def silent(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    writer.close()


def server_ctx():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    return ctx


async def echo(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            writer.write(b"echo " + line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def flood(reader, writer):
    try:
        writer.write(b"x" * 200000)
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def starttls(reader, writer):
    ctx = server_ctx()
    try:
        writer.write(b"220 ready\r\n")
        line = await reader.readline()
        if line.strip() != b"STARTTLS":
            writer.write(b"500 expected STARTTLS\r\n")
            return
        writer.write(b"220 go\r\nplaintext after 220\r\n")
        await writer.drain()
        await writer.start_tls(ctx)
        while True:
            line = await reader.readline()
            if not line:
                return
            writer.write(b"echo " + line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


def write_port(port):
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(portfile + ".tmp", portfile)


async def main():
    if mode == "tls":
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx())
    else:
        handler = {"policy": policy, "silent": silent, "flood": flood, "starttls": starttls,
                   "echo": echo}[mode]
        server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=1024)
    write_port(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if mode == "full":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    write_port(s.getsockname()[1])
    while True:
        time.sleep(3600)
else:
    asyncio.run(main())
