#!/usr/bin/env python3
"""spec/e2e/forward_peers.py -- SMTP next hops that misbehave, for
spec/e2e/forward_spec.lua, on loopback.

  forward_peers.py MODE PORTFILE

Listens on 127.0.0.1 port 0, writes the port to PORTFILE (renamed into
place) and serves until killed.  Every event is appended to PORTFILE.log
("connect", each command line, "dot" at the end of data, "closed"); the
raw DATA octets of each transaction (as sent, still dot-stuffed, final
dot included) go to PORTFILE.data.N.
  record  a good server: 250 to everything, 250 at the end of data
  reject  the same, but 554 5.7.1 at the end of data
  slow    never answers the end of data (logs "closed" when dropped)
  close   closes the connection after 64 KiB of data, without a reply
  stall   reads no data after its 354 until PORTFILE.go exists
  oneshot a good server that hangs up after each message (a pooled
          connection that is gone when next wanted)
  refuse  a good server that refuses RCPT to an address with "unknown"
"""
import asyncio
import os
import sys

mode, portfile = sys.argv[1], sys.argv[2]
log = open(portfile + ".log", "a", buffering=1)
count = 0


async def serve(reader, writer):
    global count
    log.write("connect\n")
    writer.write(b"220 peer ESMTP\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line.rstrip(b"\r\n").decode("latin-1")
            log.write(cmd + "\n")
            verb = cmd.split(" ")[0].upper()
            if verb in ("EHLO", "LHLO"):
                writer.write(b"250-peer\r\n250-8BITMIME\r\n250-SIZE 100000000\r\n250 PIPELINING\r\n")
            elif verb == "RCPT" and mode == "refuse" and "unknown" in cmd:
                writer.write(b"550 5.1.1 User unknown\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            elif verb == "DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                count += 1
                if mode == "stall":	# reads no data until PORTFILE.go exists
                    log.write("stalled\n")
                    while not os.path.exists(portfile + ".go"):
                        await asyncio.sleep(0.05)
                    log.write("reading\n")
                data = bytearray()
                closed = False
                while True:
                    l = await reader.readline()
                    if not l:
                        closed = True
                        break
                    data += l
                    if mode == "close" and len(data) > 65536:
                        log.write("hangup\n")
                        writer.close()
                        closed = True
                        break
                    if l == b".\r\n":
                        break
                with open("%s.data.%d" % (portfile, count), "wb") as f:
                    f.write(data)
                if closed:
                    break
                log.write("dot\n")
                if mode == "slow":
                    while await reader.read(4096):	# until the client hangs up
                        pass
                    break
                elif mode == "reject":
                    writer.write(b"554 5.7.1 Content refused here\r\n")
                else:
                    writer.write(b"250 2.0.0 Ok: stored %d\r\n" % count)
                    if mode == "oneshot":
                        await writer.drain()
                        break
            else:
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    log.write("closed\n")
    try:
        writer.close()
    except Exception:
        pass


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(portfile + ".tmp", portfile)
    async with server:
        await server.serve_forever()


asyncio.run(main())
