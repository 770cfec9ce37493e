"""`manage.py check_venues [--network testnet|mainnet] [--account NAME]`: check every live account's venue set-up."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from trading.venuecheck import checks_table, venue_accounts_check


class Command(BaseCommand):
    help = ("Check each live account: credentials present and well-formed, signature accepted, permissions, "
            "connectivity. Exits non-zero when any check fails; never prints a secret.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--network", choices=("testnet", "mainnet"), help="only accounts on this network")
        parser.add_argument("--account", metavar="NAME", help="only this account")

    def handle(self, *args: Any, **options: Any) -> None:
        results = venue_accounts_check(network=options["network"], name=options["account"])
        if not results:
            if options["account"]:
                raise CommandError(f"no live account named {options['account']!r}"
                                   + (f" on {options['network']}" if options["network"] else ""), returncode=2)
            self.stdout.write("no live accounts are configured" + (f" on {options['network']}"
                                                                    if options["network"] else ""))
            return
        self.stdout.write(checks_table(results))
        failed = [item for r in results for item in r.items if not item.ok]
        checks = sum(len(r.items) for r in results)
        summary = f"{len(results)} account(s), {checks} check(s), {len(failed)} failed"
        if failed:
            bad = ", ".join(r.account for r in results if not r.ok)
            raise CommandError(f"{summary} (accounts: {bad})", returncode=1)
        self.stdout.write(self.style.SUCCESS(summary))
