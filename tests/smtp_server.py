#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd) for the e-mail tests.

Listens on 127.0.0.1 (a free port unless --port is given), prints `READY <port>` on stdout once
it accepts connections, and saves every message it accepts as `<n>.eml` (the bytes received
after DATA) beside `<n>.json` (the envelope: sender, recipients, whether the session was
encrypted and who logged in). Recipients named `refused@…` are refused (550). The `.json` file is written last, so a test that sees it can
read both. Stops on SIGTERM or when stdin closes.

Modes:
  plain     no encryption
  starttls  STARTTLS offered (--cert/--key); with --require-tls nothing but STARTTLS is accepted first
  tls       implicit TLS from the first byte (--cert/--key)
With --user/--password, AUTH PLAIN and LOGIN check them and every message needs a login;
AUTH is offered before encryption only with --auth-over-plain.
"""

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Saver:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # Lets tests see a recipient refused.
        if address.lower().startswith("refused@"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, f"{self.count:04}")
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
            "login": session.auth_data if isinstance(session.auth_data, str) else None,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--require-tls", action="store_true")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--auth-over-plain", action="store_true")
    args = parser.parse_args()

    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)

    handler = Saver(args.dir)
    kwargs = {"hostname": "mail.test", "ident": "labctl test SMTP"}
    if args.mode == "starttls":
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = args.require_tls
    if args.user is not None:
        kwargs["authenticator"] = authenticator
        kwargs["auth_required"] = True
        kwargs["auth_require_tls"] = not args.auth_over_plain

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, **kwargs),
            host="127.0.0.1",
            port=args.port,
            ssl=context if args.mode == "tls" else None,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
